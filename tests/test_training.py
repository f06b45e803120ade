
import pytest
import torch

from pfp_core.training import TrainSettings, build_models, encode_memory, retrieval_loss, train, train_step
from pfp_core.vae import SpaceToDepthVAE
from pfp_core import procedural


def small(tmp_path, **changes) -> TrainSettings:
    base = dict(stage="pretrain", out=tmp_path, batch=2, history_frames=(8,), targets=2, chunk_frames=4,
                bf16=False, checkpoint_every=3, warmup=1, lr=2e-3)
    base.update(changes)
    return TrainSettings(**base)


def fixed_retrieval_loss(models, settings) -> float:
    latents = SpaceToDepthVAE().encode(procedural.video_batch([procedural.heldout_seed(i) for i in range(4)], 8))
    with torch.no_grad():
        return retrieval_loss(models, latents, settings, torch.Generator().manual_seed(0)).item()


def test_retrieval_loss_decreases_on_a_tiny_run(tmp_path):
    settings = small(tmp_path, steps=40)
    models = build_models(settings)
    before = fixed_retrieval_loss(models, settings)
    optimizer = torch.optim.AdamW(models.parameters(), lr=settings.lr)
    for step in range(settings.steps):
        train_step(models, optimizer, settings, step)
    after = fixed_retrieval_loss(models, settings)
    assert after < 0.8 * before


@pytest.mark.parametrize("stage", ["pretrain", "finetune"])
def test_resume_continues_the_same_loss_curve(tmp_path, stage):
    straight = train(small(tmp_path / "a", stage=stage, steps=6), progress=False)
    first_half = train(small(tmp_path / "b", stage=stage, steps=3), progress=False)
    second_half = train(small(tmp_path / "b", stage=stage, steps=6), progress=False)
    assert len(second_half) == 3
    assert first_half + second_half == pytest.approx(straight, abs=1e-5)
    assert len((tmp_path / "b" / "loss.jsonl").read_text().splitlines()) == 6


def test_no_memory_baseline_trains_the_dit_alone(tmp_path):
    settings = small(tmp_path, steps=2, use_memory=False)
    losses = train(settings, progress=False)
    assert len(losses) == 2 and all(l > 0 for l in losses)
    assert not (tmp_path / "encoder.safetensors").exists() and (tmp_path / "dit.safetensors").exists()


def test_unknown_stage_is_named(tmp_path):
    with pytest.raises(ValueError, match="^stage:"):
        TrainSettings(stage="warmup", out=tmp_path)


def test_sliding_window_baseline_sees_only_the_recent_latents(tmp_path):
    settings = small(tmp_path, stage="finetune", steps=2, use_memory=False, retrieval_mix=0.0, context_window=2)
    models = build_models(settings)
    history = torch.randn(1, 16, 8, 16, 16)
    memory = encode_memory(models, history, settings)
    assert memory.token_count == 2 * 8 * 8  # two latent frames of 8x8 DiT patches
    assert memory.positions[:, 0].unique().tolist() == [6.0, 7.0]  # at their true times in the history
    changed = history.clone()
    changed[:, :, :6] = 0  # frames outside the window do not reach the DiT
    assert torch.equal(encode_memory(models, changed, settings).tokens, memory.tokens)
    losses = train(settings, progress=False)
    assert len(losses) == 2 and not (tmp_path / "encoder.safetensors").exists()


def test_sliding_window_needs_a_memoryless_finetune(tmp_path):
    with pytest.raises(ValueError, match="^context-window:"):
        small(tmp_path, stage="finetune", context_window=2)
