"""Memory of a sliding history window, updated at the cost of the new frames only.

The paper re-encodes the whole history after every chunk: O(history) per chunk, O(n^2) over a video. Our
encoder is slab-local (every memory token depends only on the latents of its own temporal slab, see encoder.py),
so the tokens of a complete slab never change once computed. After a chunk only the slabs that gained frames are
encoded; the rest come from a cache keyed by the slab's absolute index, and slabs that left the window are
dropped. The result equals a full recompute (tests/generation/test_incremental.py keeps that reference).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..config import EncoderConfig
from .encoder import cell_centres
from .memory import Memory

GridEncoder = Callable[[torch.Tensor], torch.Tensor]  # latents [B, C, T, H, W] -> grid [B, dim, T/st, h, w]


class IncrementalMemory:
    """One per generation run: the cache assumes the history only grows at its end."""

    def __init__(self, encode_grid: GridEncoder, config: EncoderConfig, fps: float, time_factor: int = 1):
        self.encode_grid, self.config, self.fps, self.time_factor = encode_grid, config, fps, time_factor
        self.complete_slabs: dict[int, torch.Tensor] = {}  # absolute slab index -> grid [B, dim, 1, h, w]
        self.encoded_frames = 0  # latent frames encoded by the last call: what the update cost

    def __call__(self, window: torch.Tensor, offset: int) -> Memory:
        """window: latents [B, C, T, H, W] starting at absolute latent frame `offset` (a slab boundary)."""
        slab = self.config.latent_stride[0]
        if offset % slab:
            raise ValueError(f"offset: the window must start on a slab boundary ({slab} latent frames), got {offset}")
        first_slab, frames = offset // slab, window.shape[2]
        slabs = -(-frames // slab)
        cached = 0
        while cached < slabs and first_slab + cached in self.complete_slabs:
            cached += 1
        fresh = self.encode_grid(window[:, :, cached * slab:]) if cached < slabs else window.new_zeros(0)
        self.encoded_frames = frames - cached * slab
        self._remember(fresh, first_slab + cached, complete=(frames - cached * slab) // slab)
        self.complete_slabs = {k: v for k, v in self.complete_slabs.items() if k >= first_slab}
        grid = torch.cat([self.complete_slabs[first_slab + i] for i in range(cached)] + ([fresh] if fresh.numel() else []),
                         dim=2)
        positions = cell_centres(tuple(window.shape[2:]), self.config.latent_stride, grid.device)
        return Memory(grid.flatten(2).transpose(1, 2), positions, frames, frames * self.time_factor / self.fps,
                      clean_context=self.config.clean_context)

    def _remember(self, fresh: torch.Tensor, first: int, complete: int) -> None:
        for i in range(complete):
            self.complete_slabs[first + i] = fresh[:, :, i:i + 1]
