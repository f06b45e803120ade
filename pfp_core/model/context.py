"""The context of the next chunk: the most recent latent frames at full resolution plus the compressed memory
of everything older in the history window.

The split is the encoder's (`recent_frames` in its config), so a trained pair always gets the context it was
trained with: R = 0 is the paper's memory of the whole window, variant "none" with R > 0 the sliding-window
baseline (recent frames only). Recent frames are handed to the DiT as latents and embedded inside its forward
(pfp_core.model.memory.join_memory), so ComfyUI's WanModel embeds them with its own weights.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ..config import EncoderConfig
from .incremental import GridEncoder, IncrementalMemory
from .memory import Memory, empty_memory, with_recent

OlderMemory = Callable[[torch.Tensor], Memory]  # older history latents -> compressed memory


def build_context(config: EncoderConfig, memory_of: OlderMemory | None, window: torch.Tensor, fps: float,
                  time_factor: int = 1) -> Memory:
    """Context for a chunk after `window` [B, C, T, h, w]: its last R latents uncompressed, the rest compressed."""
    recent = min(config.recent_frames, window.shape[2])
    older = window[:, :, :window.shape[2] - recent]
    if memory_of is not None and older.shape[2]:
        memory = memory_of(older)
    else:
        memory = empty_memory(window.shape[0], config.dim, older.shape[2], older.shape[2] * time_factor / fps)
    return replace(with_recent(memory, window, recent, config.patch_size), clean_context=config.clean_context,
                   anchor_noise=config.anchor_noise, predict_change=config.predict_change,
                   change_std=config.change_std)


class ContextCompressor:
    """The generator's compressor for one run: memory of the older part updated incrementally (only new slabs
    are encoded), recent frames taken as they are."""

    def __init__(self, config: EncoderConfig, encode_grid: GridEncoder | None, fps: float, time_factor: int = 1):
        self.config, self.fps, self.time_factor = config, fps, time_factor
        self.memory = IncrementalMemory(encode_grid, config, fps, time_factor) if config.compresses else None

    def __call__(self, window: torch.Tensor, offset: int) -> Memory:
        memory_of = (lambda older: self.memory(older, offset)) if self.memory is not None else None
        return build_context(self.config, memory_of, window, self.fps, self.time_factor)

    @property
    def encoded_frames(self) -> int:
        return self.memory.encoded_frames if self.memory is not None else 0
