"""The VAE protocol the engine needs, and the tiny default: an invertible space-to-depth transform.

Pixels are [B, 3, T, H, W] in [-1, 1]; latents are [B, C, t, h, w]. Any object with `config`, `encode` and
`decode` works (inside ComfyUI the nodes wrap ComfyUI's VAE in this protocol).
"""
from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F

from ..config import VAES, VAEConfig


class VAE(Protocol):
    config: VAEConfig

    def encode(self, pixels: torch.Tensor) -> torch.Tensor: ...

    def decode(self, latents: torch.Tensor) -> torch.Tensor: ...


class SpaceToDepthVAE:
    """2x2 pixel blocks -> 12 channels, zero-padded to the 16 channels of Wan 2.1's latent layout, so the tiny
    DiT has Wan 2.1's in_dim. Exactly invertible: decode(encode(x)) == x."""

    config = VAES["space_to_depth"]

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = pixels.shape
        f = self.config.spatial_factor
        if h % f or w % f:
            raise ValueError(f"image: height and width must be multiples of {f}, got {h}x{w}; resize the input")
        frames = pixels.transpose(1, 2).reshape(b * t, c, h, w)
        packed = F.pixel_unshuffle(frames, f)
        packed = F.pad(packed, (0, 0, 0, 0, 0, self.config.latent_channels - packed.shape[1]))
        return packed.reshape(b, t, -1, h // f, w // f).transpose(1, 2)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = latents.shape
        f = self.config.spatial_factor
        used = 3 * f * f
        frames = latents.transpose(1, 2).reshape(b * t, c, h, w)[:, :used]
        pixels = F.pixel_shuffle(frames, f).clamp(-1, 1)
        return pixels.reshape(b, t, 3, h * f, w * f).transpose(1, 2)
