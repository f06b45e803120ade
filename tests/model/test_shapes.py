"""Shapes of the real model sizes, checked on the meta device (no weights, no compute)."""
import functools

import pytest
import torch

from pfp_core.config import DIT_CONFIGS, VAES, Rate, dit_config, encoder_config_for
from pfp_core.model.dit import WanDiT, wan_forward
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.model.memory import latent_to_token_positions
from pfp_core.planner import plan
from pfp_core.model.rope import grid_positions

META = torch.device("meta")
HISTORY_LATENT_FRAMES, CHUNK_LATENT_FRAMES = 9, 2


@functools.lru_cache(maxsize=None)
def meta_dit(name: str) -> WanDiT:
    with META:
        return WanDiT(dit_config(name))


def seconds_for(latent_frames: int, name: str) -> float:
    """Seconds whose causal-VAE encoding has `latent_frames` latent frames."""
    cfg = dit_config(name)
    return (latent_frames - 1) * VAES[cfg.vae].temporal_factor / cfg.fps


@pytest.mark.parametrize("name", list(DIT_CONFIGS))
def test_meta_forward_with_memory_keeps_the_latent_shape(name):
    cfg = dit_config(name)
    planned = plan(name, 832, 480, cfg.fps, seconds_for(HISTORY_LATENT_FRAMES, name),
                   chunk_seconds=seconds_for(CHUNK_LATENT_FRAMES, name), text_tokens=cfg.text_len)
    assert planned["history_latent_frames"] == HISTORY_LATENT_FRAMES
    assert planned["chunk_latent_frames"] == CHUNK_LATENT_FRAMES
    latent_hw = (planned["latent_height"], planned["latent_width"])
    if name != "tiny":  # 480p latents: 60x104 with Wan 2.1's 8x VAE, 30x52 with Wan 2.2's 16x VAE
        assert latent_hw == ((60, 104) if cfg.vae == "wan2.1" else (30, 52))
    with META:
        encoder = MemoryEncoder(encoder_config_for(name))
        memory = encoder.encode(torch.zeros(1, cfg.in_dim, HISTORY_LATENT_FRAMES, *latent_hw), fps=cfg.fps,
                                time_factor=VAES[cfg.vae].temporal_factor)
        latents = torch.zeros(1, cfg.in_dim, CHUNK_LATENT_FRAMES, *latent_hw)
        frame_times = torch.arange(HISTORY_LATENT_FRAMES, HISTORY_LATENT_FRAMES + CHUNK_LATENT_FRAMES)
        out = wan_forward(meta_dit(name), latents, torch.full((1,), 500.0), torch.zeros(1, cfg.text_len, cfg.text_dim),
                          memory, frame_times)
    assert out.shape == latents.shape and out.device.type == "meta"
    assert memory.tokens.shape == (1, planned["memory_tokens"], cfg.dim)
    assert memory.positions.shape == (planned["memory_tokens"], 3)


def summarised_token_centres(grid: tuple[int, int, int], rate: Rate) -> torch.Tensor:
    """Mean position of the real DiT tokens in each memory cell (padding excluded), over the token grid `grid`."""
    positions = grid_positions(torch.arange(grid[0])[None], grid[1], grid[2])[0]
    t, h, w = positions.long().unbind(-1)
    cells = (-(-grid[0] // rate.t), -(-grid[1] // rate.h), -(-grid[2] // rate.w))
    cell = ((t // rate.t) * cells[1] + h // rate.h) * cells[2] + w // rate.w
    sums = torch.zeros(cells[0] * cells[1] * cells[2], 3).index_add_(0, cell, positions)
    counts = torch.zeros(sums.shape[0]).index_add_(0, cell, torch.ones(len(cell)))
    return sums / counts[:, None]


@pytest.mark.parametrize("rate,first,last", [
    # latents (T, H, W) = (5, 12, 20), patch 1x2x2: tokens 5 x 6 x 10, replicate-padded to whole cells; an edge
    # token sits at the middle of the real tokens of its cell (4x4x2: only rows 4-5 of rows 4-7 exist -> 4.5)
    ("4x4x2", [0.5, 1.5, 1.5], [4.0, 4.5, 8.5]),  # cells of 2 frames x 4 x 4 tokens -> grid 3 x 2 x 3
    ("2x2x1", [0.0, 0.5, 0.5], [4.0, 4.5, 8.5]),  # cells of 1 frame x 2 x 2 tokens -> grid 5 x 3 x 5
])
def test_memory_positions_sit_in_the_middle_of_the_tokens_they_summarise(rate, first, last):
    cfg = encoder_config_for("tiny", rate)
    with torch.no_grad():
        memory = MemoryEncoder(cfg).eval().encode(torch.zeros(1, 16, 5, 12, 20), fps=8)
    stride = cfg.latent_stride
    # Memory.positions: cell centres in latent units
    assert memory.positions[0].tolist() == [(s - 1) / 2 for s in stride]
    token_positions = latent_to_token_positions(memory.positions, cfg.patch_size)
    assert token_positions[0].tolist() == first and token_positions[-1].tolist() == last
    tokens = tuple(n // p for n, p in zip((5, 12, 20), cfg.patch_size))
    assert torch.equal(token_positions, summarised_token_centres(tokens, Rate.parse(rate)))


def test_wan13_state_dict_uses_wan_names_and_size():
    model = meta_dit("wan2.1-1.3b")
    keys = set(model.state_dict())
    canonical = {"patch_embedding.weight", "text_embedding.0.weight", "time_embedding.0.weight",
                 "time_projection.1.weight", "blocks.0.self_attn.q.weight", "blocks.0.self_attn.norm_q.weight",
                 "blocks.0.cross_attn.k.weight", "blocks.0.norm3.weight", "blocks.0.ffn.0.weight",
                 "blocks.0.modulation", "head.head.weight", "head.modulation"}
    assert canonical <= keys, sorted(canonical - keys)
    assert "blocks.29.ffn.2.bias" in keys and "blocks.30.ffn.2.bias" not in keys
    assert sum(p.numel() for p in model.parameters()) == pytest.approx(1.419e9, rel=0.01)
