import pytest
import torch

from pfp_core.config import MEMORY_VARIANTS, Rate, encoder_config_for
from pfp_core.model.encoder import MemoryEncoder


@pytest.mark.parametrize("variant", MEMORY_VARIANTS)
@pytest.mark.parametrize("rate,expected", [("4x4x2", 2 * 2 * 3), ("2x2x2", 4 * 4 * 3), ("2x2x1", 4 * 4 * 6), ("3x2x4", 3 * 4 * 2)])
def test_token_counts_per_rate_and_variant(variant, rate, expected):
    encoder = MemoryEncoder(encoder_config_for("tiny", rate, variant))
    memory = encoder.encode(torch.randn(1, 16, 6, 16, 16), fps=8)
    assert memory.tokens.shape == (1, expected, 128)
    assert memory.positions.shape == (expected, 3)
    assert memory.seconds == pytest.approx(6 / 8)


def test_variants_are_one_architecture_with_different_branches():
    names = {v: {n.split(".")[0] for n, _ in MemoryEncoder(encoder_config_for("tiny", variant=v)).named_parameters()}
             for v in MEMORY_VARIANTS}
    assert names["proposed"] == {"lr", "hr", "hr_gate"}
    assert names["only_lr"] == {"lr"} and names["without_lr"] == {"hr"} and names["large_patchifier"] == {"patchifier"}


def test_hr_branch_adds_detail_the_lr_branch_cannot_see():
    """Change only sub-pool-cell detail (mean-preserving within each 2x2 LR pool): only the HR path reacts."""
    torch.manual_seed(0)
    encoder = MemoryEncoder(encoder_config_for("tiny")).eval()
    latents = torch.randn(1, 16, 2, 16, 16)
    checker = (torch.arange(16)[:, None] + torch.arange(16)[None]) % 2 * 2 - 1.0
    with torch.no_grad():
        lr_change = encoder.lr(latents + checker) - encoder.lr(latents)
        full_change = encoder(latents + checker) - encoder(latents)
    assert lr_change.abs().max() < 1e-5
    assert full_change.abs().max() > 1e-3


def test_memory_tokens_depend_only_on_their_own_slab():
    torch.manual_seed(1)
    encoder = MemoryEncoder(encoder_config_for("tiny")).eval()
    latents = torch.randn(1, 16, 8, 16, 16)
    changed = latents.clone()
    changed[:, :, 5] += 1.0  # frame 5 lives in slab 2 (frames 4-5)
    with torch.no_grad():
        diff = (encoder(changed) - encoder(latents)).abs().amax(dim=(0, 1, 3, 4))
    assert diff[2] > 1e-3 and diff[[0, 1, 3]].max() == 0


def test_rate_parse_errors_name_the_field():
    assert Rate.parse("4x4x2") == Rate(4, 4, 2)
    with pytest.raises(ValueError, match="^rate: '4x4' is not HxWxT"):
        Rate.parse("4x4")
    with pytest.raises(ValueError, match="variant"):
        encoder_config_for("tiny", variant="big")


def test_bf16_encoder_runs_on_cpu_and_matches_fp32():
    """The LR pooling is a mean over blocks: avg_pool3d has no bfloat16 kernel on CPU (ComfyUI's --cpu, bf16 dtype)."""
    torch.manual_seed(0)
    encoder = MemoryEncoder(encoder_config_for("tiny", "2x2x2")).eval()
    latents = torch.randn(1, 16, 5, 12, 20)
    with torch.no_grad():
        reference = encoder(latents)
        pooled = torch.nn.functional.avg_pool3d(latents, (1, 2, 2))
        assert torch.allclose(encoder.lr.patchify(pooled), encoder.lr(latents), atol=1e-5)
        half = encoder.to(torch.bfloat16)(latents.to(torch.bfloat16))
    assert half.dtype == torch.bfloat16
    assert (half.float() - reference).abs().max() < 0.05 * reference.abs().max()
