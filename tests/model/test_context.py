from dataclasses import replace

import pytest
import torch

from pfp_core.config import encoder_config_for
from pfp_core.model.context import ContextCompressor, build_context
from pfp_core.model.encoder import MemoryEncoder, cell_centres
from pfp_core.model.memory import (Memory, change_input, change_loss_weight, change_skip, empty_memory, load_memory,
                                   save_memory)


def test_context_is_recent_latents_plus_memory_of_the_older_history(random_engine):
    config = encoder_config_for("tiny", "2x2x2", recent_frames=2)
    encoder = MemoryEncoder(config).eval()
    window = torch.randn(1, 16, 10, 16, 16)
    with torch.no_grad():
        context = build_context(config, lambda older: encoder.encode(older, 8), window, fps=8)
        older = encoder.encode(window[:, :, :8], 8)
    assert torch.equal(context.recent_latents, window[:, :, 8:]) and context.recent_start == 8
    assert torch.equal(context.tokens, older.tokens) and torch.equal(context.positions, older.positions)
    assert context.token_count == 4 * 4 * 4 + 2 * 64 and context.latent_frames == 10


def test_sliding_window_variant_keeps_no_memory():
    config = encoder_config_for("tiny", variant="none", recent_frames=3)
    context = ContextCompressor(config, None, fps=8)(torch.randn(1, 16, 2, 16, 16), offset=0)
    assert context.tokens.shape[1] == 0 and context.recent_latents.shape[2] == 2  # shorter history: all of it


def test_recent_frames_enter_at_their_own_times(random_engine):
    """Recent latents embedded inside the forward equal the same patch tokens handed over as memory tokens at
    the centres of their cells: the DiT sees them where its own frames at those times would be."""
    dit = random_engine.dit
    recent = torch.randn(1, 16, 2, 16, 16)
    chunk, text = torch.randn(1, 16, 3, 16, 16), torch.zeros(1, 1, 4096)
    times = torch.arange(7, 10)[None]
    with torch.no_grad():
        as_recent = dit(chunk, torch.full((1,), 500.0), text, Memory(torch.zeros(1, 0, 128), torch.zeros(0, 3), 7, 1.0,
                                                                      recent, recent_start=5), times)
        tokens = dit.patch_embedding(recent).flatten(2).transpose(1, 2)
        positions = cell_centres((2, 16, 16), (1, 2, 2), recent.device)
        positions[:, 0] += 5
        as_tokens = dit(chunk, torch.full((1,), 500.0), text, Memory(tokens, positions, 7, 1.0), times)
        elsewhere = dit(chunk, torch.full((1,), 500.0), text, Memory(torch.zeros(1, 0, 128), torch.zeros(0, 3), 7, 1.0,
                                                                      recent, recent_start=0), times)
    assert (as_recent - as_tokens).abs().max() <= 1e-5
    assert (as_recent - elsewhere).abs().max() > 1e-3  # positions matter


def test_incremental_context_equals_a_full_recompute():
    torch.manual_seed(1)
    config = encoder_config_for("tiny", "2x2x2", recent_frames=2)
    encoder = MemoryEncoder(config).eval()
    compressor = ContextCompressor(config, encoder, fps=8)
    history = torch.randn(1, 16, 40, 16, 16)
    with torch.no_grad():
        for end in range(8, 41, 8):
            start = max(0, end - 24)
            fast = compressor(history[:, :, start:end], start)
            reference = build_context(config, lambda older: encoder.encode(older, 8), history[:, :, start:end], 8)
            assert (fast.tokens - reference.tokens).abs().max() <= 1e-5
            assert torch.equal(fast.recent_latents, reference.recent_latents)
    assert compressor.encoded_frames == 8


def test_saved_context_keeps_its_recent_frames(tmp_path):
    memory = empty_memory(1, 128, 6, 0.75)
    memory = Memory(memory.tokens, memory.positions, 6, 0.75, torch.randn(1, 16, 2, 16, 16), 4)
    loaded = load_memory(save_memory(memory, tmp_path / "m.safetensors"))
    assert torch.equal(loaded.recent_latents, memory.recent_latents) and loaded.recent_start == 4
    assert loaded.token_count == memory.token_count == 128


def test_a_chunk_flows_from_the_last_recent_latent_when_its_encoder_says_so():
    window, noise = torch.randn(1, 16, 5, 16, 16), torch.randn(1, 16, 3, 16, 16)
    anchored = encoder_config_for("tiny", variant="none", recent_frames=2, anchor_noise=0.5)
    start = build_context(anchored, None, window, fps=8).flow_start(noise)
    assert torch.allclose(start, window[:, :, -1:].expand(-1, -1, 3, -1, -1) + 0.5 * noise)
    plain = encoder_config_for("tiny", variant="none", recent_frames=2)
    assert build_context(plain, None, window, fps=8).flow_start(noise) is noise  # Wan's own: pure noise


def test_anchor_noise_needs_recent_frames_to_start_from():
    with pytest.raises(ValueError, match="^anchor_noise: 0.5 needs .* recent frames"):
        encoder_config_for("tiny", anchor_noise=0.5)
    with pytest.raises(ValueError, match="^anchor_noise: 0.0 needs a positive scale"):
        encoder_config_for("tiny", recent_frames=2, anchor_noise=0.0)


def test_saved_context_keeps_where_its_chunks_start(tmp_path):
    memory = build_context(encoder_config_for("tiny", variant="none", recent_frames=2, anchor_noise=0.25), None,
                           torch.randn(1, 16, 4, 16, 16), fps=8)
    assert load_memory(save_memory(memory, tmp_path / "m.safetensors")).anchor_noise == 0.25
    assert load_memory(save_memory(replace(memory, anchor_noise=None), tmp_path / "p.safetensors")).anchor_noise is None


def test_a_change_reading_dit_denoises_the_flow_of_the_change_from_the_last_frame(random_engine):
    """It reads x_t - last: for a chunk that flows from the last latent plus A eps, that is (1 - s) change + s A eps,
    the flow of the change alone, and its velocity adds the skip's share of what it read; retrieval (no recent
    frames) reads the latents as they are."""
    from pfp_core.model.flow import add_noise

    dit = random_engine.dit
    torch.nn.init.normal_(dit.head.head.weight, std=0.05)
    config = encoder_config_for("tiny", variant="none", recent_frames=2, anchor_noise=0.5, predict_change=True)
    window, text, times = torch.randn(1, 16, 4, 16, 16), torch.zeros(1, 1, 4096), torch.arange(4, 7)[None]
    memory = build_context(config, None, window, fps=8)
    last = window[:, :, -1:]
    chunk, noise = last + 0.1 * torch.randn(1, 16, 3, 16, 16), torch.randn(1, 16, 3, 16, 16)
    x = add_noise(chunk, memory.flow_start(noise), torch.tensor([0.3]))
    assert torch.allclose(change_input(x, memory), add_noise(chunk - last, 0.5 * noise, torch.tensor([0.3])), atol=1e-6)
    with torch.no_grad():
        reading_change = dit(x, torch.tensor([300.0]), text, memory, times)
        reading_it = dit(x - last, torch.tensor([300.0]), text, replace(memory, predict_change=False), times)
    skip = change_skip(torch.tensor([300.0]), memory)
    assert torch.allclose(reading_change, reading_it + skip * (x - last), atol=1e-5)
    retrieval = replace(memory, recent_latents=None)
    assert change_input(x, retrieval) is x and change_skip(torch.tensor([300.0]), retrieval) is None


def test_the_change_skip_alone_carries_an_unchanged_chunk_to_the_last_frame():
    """With Wan's zero head the velocity is the skip's: at s = 1 it is the change read (one Euler step lands on
    the last frame exactly), near the data it tends to -1, and 12 steps end within the assumed spread of it."""
    from pfp_core.model.flow import sample, sampling_sigmas

    from pfp_core.config import dit_config
    from pfp_core.model.dit import WanDiT

    dit = WanDiT(dit_config("tiny")).eval()  # Wan's zero head
    config = encoder_config_for("tiny", variant="none", recent_frames=2, anchor_noise=0.5, predict_change=True)
    window, text, times = torch.randn(1, 16, 4, 16, 16), torch.zeros(1, 1, 4096), torch.arange(4, 12)[None]
    memory = build_context(config, None, window, fps=8)
    assert change_skip(torch.tensor([1000.0]), memory).item() == pytest.approx(1.0)
    assert change_skip(torch.tensor([0.0]), memory).item() == pytest.approx(-1.0)
    start = memory.flow_start(torch.randn(1, 16, 8, 16, 16))
    velocity = lambda x, s: dit(x, s * 1000, text, memory, times)  # noqa: E731
    with torch.no_grad():
        one_step = sample(velocity, start, sampling_sigmas(1, 1.0))
        twelve = sample(velocity, start, sampling_sigmas(12, 1.0))
    assert torch.allclose(one_step, window[:, :, -1:].expand_as(one_step), atol=1e-5)
    assert (twelve - window[:, :, -1:]).std() < config.change_std


def test_predict_change_needs_an_anchored_start_and_is_saved_with_the_context(tmp_path):
    with pytest.raises(ValueError, match="^predict_change: .* needs anchor_noise"):
        encoder_config_for("tiny", recent_frames=2, predict_change=True)
    config = encoder_config_for("tiny", variant="none", recent_frames=2, anchor_noise=0.5, predict_change=True)
    memory = build_context(config, None, torch.randn(1, 16, 4, 16, 16), fps=8)
    loaded = load_memory(save_memory(replace(memory, change_std=0.2), tmp_path / "m.safetensors"))
    assert loaded.predict_change and loaded.change_std == 0.2
    assert not load_memory(save_memory(replace(memory, predict_change=False), tmp_path / "v.safetensors")).predict_change


def test_the_change_loss_weight_is_one_over_what_the_skip_leaves_of_the_velocity():
    """On changes of the assumed spread, the velocity's error after the skip alone has variance 1 / weight at every
    noise level, so weighted errors are alike across levels (EDM's loss weight), and low noise weighs less."""
    config = encoder_config_for("tiny", variant="none", recent_frames=1, anchor_noise=0.5, predict_change=True)
    memory = build_context(config, None, torch.zeros(1, 16, 2, 4, 4), fps=8)
    generator = torch.Generator().manual_seed(0)
    change = memory.change_std * torch.randn(200_000, generator=generator)
    noise = memory.anchor_noise * torch.randn(200_000, generator=generator)
    timesteps = torch.tensor([50.0, 300.0, 700.0, 980.0])
    weights = change_loss_weight(timesteps, memory)
    for sigma, skip, weight in zip(timesteps / 1000, change_skip(timesteps, memory).flatten(), weights):
        read = (1 - sigma) * change + sigma * noise
        left = (noise - change) - skip * read
        assert left.var().item() * weight.item() == pytest.approx(1.0, rel=0.02)
    assert torch.all(weights[1:] > weights[:-1])
    assert change_loss_weight(timesteps, replace(memory, predict_change=False)) is None
