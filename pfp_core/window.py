"""Uncompressed context: history latents as the DiT's own patch tokens, joined like memory.

Two baselines use it: the full history as context (bench speed: what memory saves) and a sliding window of the
most recent frames (bench table2: what a model without long-range memory can keep).
"""
from __future__ import annotations

import torch

from .dit import WanDiT
from .encoder import cell_centres
from .memory import Memory


def uncompressed_memory(dit: WanDiT, history_latents: torch.Tensor, fps: float, first_time: int = 0) -> Memory:
    """One token per DiT patch, at the (t, h, w) positions the DiT gives its own tokens; `first_time` is the
    latent frame the given latents start at, so a window's tokens keep their true times."""
    tokens = dit.patch_embedding(history_latents.to(dit.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
    positions = cell_centres(tuple(history_latents.shape[2:]), tuple(dit.patch_size), history_latents.device)
    positions[:, 0] += first_time
    frames = history_latents.shape[2]
    return Memory(tokens, positions, first_time + frames, (first_time + frames) / fps)


def recent_window(dit: WanDiT, window_frames: int, fps: float):
    """A compressor for the generator: the last `window_frames` latent frames of the history window, uncompressed."""
    def compress(window: torch.Tensor, offset: int) -> Memory:
        kept = window[:, :, -window_frames:]
        return uncompressed_memory(dit, kept, fps, first_time=window.shape[2] - kept.shape[2])
    return compress
