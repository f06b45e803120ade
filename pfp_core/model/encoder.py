"""Memory encoder phi: compresses history latents into memory tokens in the DiT's inner width.

Two branches (paper, Fig. 3). The low-resolution (LR) branch pools the latents and patchifies them into one token
per memory cell: global structure. The high-resolution (HR) branch runs 3D convolutions + SiLU at full latent
resolution, downsamples with a strided 3D convolution and refines with attention; its output is added to the LR
tokens as residual enhancing vectors through a learned gate. The Table 1 ablations are variants of this one
module: `only_lr`, `without_lr`, and `large_patchifier` (FramePack-like: one big patch embedding).

Every memory token depends only on the frames of its own temporal slab (rate t latent frames): attention runs
within a slab. So appending a chunk only needs the new slabs encoded (pfp_core.generation.generator keeps them), and a
memory token means the same thing wherever the history window starts.
"""
from __future__ import annotations

import math
from types import ModuleType

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from torch.utils.checkpoint import checkpoint

from .attention import attention
from ..config import EncoderConfig
from .memory import Memory
from .rope import apply_rope, rope_angles


class ResBlock3d(nn.Module):
    """SiLU -> conv -> SiLU -> conv, residual. Kernels are 1x3x3: time is mixed by the slab convolution."""

    def __init__(self, width: int, ops: ModuleType):
        super().__init__()
        self.conv1 = ops.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))
        self.conv2 = ops.Conv3d(width, width, (1, 3, 3), padding=(0, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class SlabAttention(nn.Module):
    """Pre-norm attention + MLP over the memory tokens of one temporal slab, with 2D rotary positions."""

    def __init__(self, width: int, heads: int, ops: ModuleType):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = ops.LayerNorm(width), ops.LayerNorm(width)
        self.qkv = ops.Linear(width, 3 * width)
        self.proj = ops.Linear(width, width)
        self.mlp = nn.Sequential(ops.Linear(width, 4 * width), nn.SiLU(), ops.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, angles: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(self.norm1(x)).chunk(3, dim=-1)
        q, k = apply_rope(q, angles, self.heads), apply_rope(k, angles, self.heads)
        x = x + self.proj(attention(q, k, v, self.heads))
        return x + self.mlp(self.norm2(x))


class LowResBranch(nn.Module):
    def __init__(self, cfg: EncoderConfig, ops: ModuleType):
        super().__init__()
        st, sh, sw = cfg.latent_stride
        self.pool = math.gcd(cfg.lr_downsample, sh, sw)  # pooling must divide the memory cell
        self.patchify = ops.Conv3d(cfg.in_channels, cfg.dim, (st, sh // self.pool, sw // self.pool),
                                  stride=(st, sh // self.pool, sw // self.pool))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        # a mean over pool x pool blocks rather than avg_pool3d, which has no bfloat16 kernel on CPU
        b, c, t, h, w = latents.shape
        pooled = latents.view(b, c, t, h // self.pool, self.pool, w // self.pool, self.pool).mean(dim=(4, 6))
        return self.patchify(pooled)


class HighResBranch(nn.Module):
    def __init__(self, cfg: EncoderConfig, ops: ModuleType):
        super().__init__()
        stride = cfg.latent_stride
        self.stem = ops.Conv3d(cfg.in_channels, cfg.width, (1, 3, 3), padding=(0, 1, 1))
        self.blocks = nn.Sequential(*(ResBlock3d(cfg.width, ops) for _ in range(cfg.hr_blocks)))
        self.down = ops.Conv3d(cfg.width, cfg.width, stride, stride=stride)
        self.attn = nn.ModuleList(SlabAttention(cfg.width, cfg.attn_heads, ops) for _ in range(cfg.attn_layers))
        self.out = ops.Linear(cfg.width, cfg.dim)
        self.grad_checkpointing = False  # training: recompute the full-resolution convolutions in backward

    def full_resolution(self, latents: torch.Tensor) -> torch.Tensor:
        """The costly part: convolutions at full latent resolution, ending in the strided downsample."""
        return self.down(F.silu(self.blocks(self.stem(latents))))

    def forward(self, latents: torch.Tensor) -> torch.Tensor:
        if self.grad_checkpointing and torch.is_grad_enabled():
            x = checkpoint(self.full_resolution, latents, use_reentrant=False)
        else:
            x = self.full_resolution(latents)
        b, _, t, h, w = x.shape
        slabs = rearrange(x, "b c t h w -> (b t) (h w) c")
        angles = slab_angles(h, w, slabs.shape[-1] // self.attn[0].heads if self.attn else 2, x.device)
        for layer in self.attn:
            slabs = layer(slabs, angles)
        return rearrange(self.out(slabs), "(b t) (h w) c -> b c t h w", b=b, t=t, h=h)


def slab_angles(height: int, width: int, head_dim: int, device: torch.device) -> torch.Tensor:
    hh, ww = torch.meshgrid(torch.arange(height, device=device), torch.arange(width, device=device), indexing="ij")
    positions = torch.stack((torch.zeros_like(hh), hh, ww), dim=-1).reshape(-1, 3).float()
    return rope_angles(positions, head_dim)


class MemoryEncoder(nn.Module):
    """`ops` supplies Conv3d, Linear and LayerNorm: torch.nn here, comfy.ops inside ComfyUI (casting, offload)."""

    def __init__(self, cfg: EncoderConfig, ops: ModuleType = nn):
        super().__init__()
        self.config = cfg
        if cfg.variant == "large_patchifier":
            self.patchifier = ops.Conv3d(cfg.in_channels, cfg.dim, cfg.latent_stride, stride=cfg.latent_stride)
        if cfg.variant in ("proposed", "only_lr"):
            self.lr = LowResBranch(cfg, ops)
        if cfg.variant in ("proposed", "without_lr"):
            self.hr = HighResBranch(cfg, ops)
        if cfg.variant == "proposed":
            self.hr_gate = nn.Parameter(torch.full((cfg.dim,), cfg.hr_gate_init))

    def forward(self, history_latents: torch.Tensor) -> torch.Tensor:
        """history latents [B, C, T, H, W] -> memory grid [B, dim, T/st, H/sh, W/sw] (padded up to whole cells)."""
        if not self.config.compresses:
            raise ValueError("memory_encoder: the 'none' variant keeps no memory (sliding-window baseline); its "
                             "context is the recent frames alone (pfp_core.model.context)")
        latents = pad_to_cells(history_latents, self.config.latent_stride)
        variant = self.config.variant
        if variant == "large_patchifier":
            return self.patchifier(latents)
        if variant == "only_lr":
            return self.lr(latents)
        if variant == "without_lr":
            return self.hr(latents)
        gate = self.hr_gate.to(latents.dtype)[:, None, None, None]
        return self.lr(latents) + gate * self.hr(latents)

    def encode(self, history_latents: torch.Tensor, fps: float, time_factor: int = 1) -> Memory:
        """Memory tokens with the positions they summarise. `time_factor`: video frames per latent frame."""
        grid = self(history_latents)
        latent_frames = history_latents.shape[2]
        positions = cell_centres(tuple(history_latents.shape[2:]), self.config.latent_stride, grid.device)
        return Memory(tokens=grid.flatten(2).transpose(1, 2), positions=positions, latent_frames=latent_frames,
                      seconds=latent_frames * time_factor / fps, clean_context=self.config.clean_context,
                      predict_change=self.config.predict_change)


def pad_to_cells(latents: torch.Tensor, stride: tuple[int, int, int]) -> torch.Tensor:
    """Replicate-pad T, H, W at the end up to multiples of the memory cell."""
    pads = [(-size) % s for size, s in zip(latents.shape[2:], stride)]
    if not any(pads):
        return latents
    return F.pad(latents, (0, pads[2], 0, pads[1], 0, pads[0]), mode="replicate")


def cell_centres(size: tuple[int, int, int], stride: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """Centre (t, h, w) of the real latents in each memory cell (padding excluded), in flatten(2) order."""
    axes = []
    for n, s in zip(size, stride):
        starts = torch.arange(0, n, s, device=device, dtype=torch.float32)
        axes.append((starts + (starts + s).clamp(max=n) - 1) / 2)
    t, h, w = torch.meshgrid(*axes, indexing="ij")
    return torch.stack((t, h, w), dim=-1).reshape(-1, 3)
