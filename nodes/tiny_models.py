"""The bundled tiny model's VAE and text encoder, shaped like the ComfyUI objects stock nodes expect
(VAEEncode/VAEDecode call encode/decode; CLIPTextEncode calls tokenize/encode_from_tokens_scheduled)."""
from __future__ import annotations

import torch
import comfy.latent_formats

from ..pfp_core.generation.pipeline import DEFAULT_ENCODER
from ..pfp_core.model.checkpoint import load_encoder
from ..pfp_core.model.text import HashTextEncoder
from ..pfp_core.model.vae import SpaceToDepthVAE


class TinyVAE:
    """The tiny model's space-to-depth VAE with ComfyUI's VAE interface, in Wan 2.1's raw latent space (the DiT
    loads as Wan 2.1, whose latent format normalises with Wan's per-channel mean and std)."""

    latent_channels = 16

    def __init__(self):
        wan = comfy.latent_formats.Wan21()
        self.mean, self.std = wan.latents_mean, wan.latents_std
        self.space_to_depth = SpaceToDepthVAE()

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        pixels = (images[..., :3].float() * 2 - 1).permute(3, 0, 1, 2)[None]
        return self.space_to_depth.encode(pixels) * self.std + self.mean

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        pixels = self.space_to_depth.decode((latents.float().cpu() - self.mean) / self.std)
        return ((pixels + 1) / 2).permute(0, 2, 3, 4, 1)  # [B, T, H, W, 3]

    def spacial_compression_encode(self) -> int:
        return SpaceToDepthVAE.config.spatial_factor

    def spacial_compression_decode(self) -> int:
        return SpaceToDepthVAE.config.spatial_factor

    def temporal_compression_decode(self) -> int:
        return SpaceToDepthVAE.config.temporal_factor


class TinyTextEncoder:
    """The tiny model's word-hash text encoder with the two methods CLIPTextEncode calls, padding prompts as the
    bundled pair's training captions were."""

    def __init__(self):
        self.encoder = HashTextEncoder(4096, 32, load_encoder(DEFAULT_ENCODER).config.text_padding)

    def tokenize(self, text: str) -> str:
        return text

    def encode_from_tokens_scheduled(self, tokens: str, **kwargs) -> list:
        return [[self.encoder.encode([tokens]), {}]]
