"""ComfyUI objects behind pfp_core's small interfaces: the memory encoder handle, the VAE protocol and the chunk
sampler."""
from __future__ import annotations

import hashlib
import math
import os
from dataclasses import dataclass, field
from typing import Callable

import torch
import comfy.model_management
import comfy.model_patcher
import comfy.ops
import comfy.sample

from ..pfp_core.model.checkpoint import check_compatible, load_encoder
from ..pfp_core.config import DiTConfig, EncoderConfig, VAEConfig
from ..pfp_core.model.context import ContextCompressor
from ..pfp_core.model.memory import Memory
from ..pfp_core.planner import activation_bytes, encoder_activation_bytes
from .wan_memory import MemoryInjection, with_memory


@dataclass
class EncoderHandle:
    """MEMORY_ENCODER: the encoder as a ModelPatcher, so ComfyUI loads and offloads it with the DiT."""

    patcher: comfy.model_patcher.ModelPatcher
    config: EncoderConfig
    name: str

    @classmethod
    def load(cls, path: str, dtype: torch.dtype | None) -> "EncoderHandle":
        encoder = load_encoder(path, comfy.ops.manual_cast)
        if dtype is not None:
            encoder = encoder.to(dtype)
        patcher = comfy.model_patcher.ModelPatcher(encoder, comfy.model_management.get_torch_device(),
                                                   comfy.model_management.unet_offload_device())
        return cls(patcher, encoder.config, os.path.basename(path))

    def grid(self, latents: torch.Tensor) -> torch.Tensor:
        """Memory grid [B, dim, t, h, w] on the CPU in fp32 (memories are small; the DiT casts them). Model
        management is told the pass's peak, so it unloads enough of the DiT before a long history is encoded."""
        encoder = self.patcher.model
        dtype = next(encoder.parameters()).dtype
        needed = latents.shape[0] * encoder_activation_bytes(self.config, tuple(latents.shape[2:]), dtype.itemsize)
        comfy.model_management.load_models_gpu([self.patcher], memory_required=needed)
        with torch.no_grad():
            return encoder(latents.to(self.patcher.load_device, dtype)).to("cpu", torch.float32)

    def compress(self, latents: torch.Tensor, fps: float, time_factor: int) -> Memory:
        return self.updater(fps, time_factor)(latents, 0)

    def updater(self, fps: float, time_factor: int) -> ContextCompressor:
        """A fresh compressor for one run: the encoder's recent frames as they are, and memory of the older
        history where only new slabs are encoded after each chunk."""
        return ContextCompressor(self.config, self.grid, fps, time_factor)

    def check_model(self, model_patcher) -> None:
        net = model_patcher.model.diffusion_model
        if not hasattr(net, "blocks") or not hasattr(net, "head") or type(net).__name__ != "WanModel":
            raise ValueError(f"model: {type(net).__name__} is not a Wan model; PFP memory needs Wan 2.1/2.2 (load it "
                             "with Load Diffusion Model)")
        check_compatible(self.config, _wan_config(net))


def _wan_config(net) -> DiTConfig:
    """The shape of ComfyUI's WanModel in pfp_core's terms, for the compatibility check and the planner."""
    return DiTConfig(name=type(net).__name__, dim=net.dim, ffn_dim=net.ffn_dim, num_heads=net.num_heads,
                     num_layers=len(net.blocks), in_dim=net.in_dim, out_dim=net.out_dim, patch_size=tuple(net.patch_size))


class ComfyVAE:
    """pfp_core's VAE protocol over a ComfyUI VAE, in the model's normalised latent space (process_in)."""

    def __init__(self, vae, latent_format):
        self.vae, self.latent_format = vae, latent_format
        temporal = vae.temporal_compression_decode() if hasattr(vae, "temporal_compression_decode") else 1
        self.config = VAEConfig("comfy", vae.latent_channels, vae.spacial_compression_encode(), temporal or 1)

    def encode(self, pixels: torch.Tensor) -> torch.Tensor:
        images = ((pixels[0] + 1) / 2).permute(1, 2, 3, 0)  # [T, H, W, 3] in 0..1, ComfyUI's IMAGE
        return self.latent_format.process_in(self.vae.encode(images).float().cpu())

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        images = self.vae.decode(self.latent_format.process_out(latents)).float().cpu()
        images = images.reshape(-1, *images.shape[-3:])  # video VAEs return [B, T, H, W, 3]
        return (images * 2 - 1).permute(3, 0, 1, 2)[None]


@dataclass
class ComfyChunkSampler:
    """Samples a chunk through ComfyUI's own sampling path with memory injected into the Wan forward."""

    model: comfy.model_patcher.ModelPatcher
    conditioning: dict[str, list]  # prompt -> CONDITIONING
    negative: list
    steps: int
    cfg: float
    sampler_name: str
    scheduler: str
    encoder: EncoderHandle | None = None

    injection: MemoryInjection | None = field(default=None, init=False)
    patched: comfy.model_patcher.ModelPatcher | None = field(default=None, init=False)

    def __call__(self, memory: Memory, frame_times: torch.Tensor, prompt: str, latent_shape: tuple[int, ...],
                 seed: int, on_step: Callable[[int, int, torch.Tensor], None]) -> torch.Tensor:
        patched = self._with_memory(memory, int(frame_times.flatten()[0]))
        self._load_within_budget(patched, memory, latent_shape)
        noise = memory.flow_start(torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed)))
        latent_format = self.model.model.latent_format
        samples = comfy.sample.sample(
            patched, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, self.conditioning[prompt],
            self.negative, torch.zeros(latent_shape), seed=seed, disable_pbar=True,
            callback=lambda step, x0, x, total: on_step(step + 1, total, x0))
        return latent_format.process_in(samples.float().cpu())

    def _with_memory(self, memory: Memory, first_frame_time: int) -> comfy.model_patcher.ModelPatcher:
        """One memory-patched clone for the whole run, so ComfyUI loads it once; each chunk swaps in its memory."""
        if self.patched is None:
            self.injection = MemoryInjection(memory, first_frame_time)
            self.patched = with_memory(self.model, self.injection)
            if self.encoder is not None:  # accounted for in the same load_models_gpu call as the DiT
                self.patched.set_additional_models("pfp_encoder", [self.encoder.patcher])
        self.injection.memory, self.injection.first_frame_time = memory, first_frame_time
        return self.patched

    def _load_within_budget(self, patched, memory: Memory, latent_shape: tuple[int, ...]) -> None:
        """Tell model management what one step needs with memory tokens joined (CFG doubles the batch), so it
        offloads enough of the DiT and encoder before sampling rather than running out mid-chunk."""
        net = self.model.model.diffusion_model
        patch = math.prod(net.patch_size)
        tokens = math.prod(latent_shape[2:]) // patch + memory.token_count
        # activations are in the compute dtype: manual_cast_dtype (bf16 for fp8 weights) when ComfyUI sets one
        dtype = getattr(self.model.model, "manual_cast_dtype", None) or self.model.model_dtype()
        dtype_bytes = dtype.itemsize if dtype is not None else 2
        needed = activation_bytes(_wan_config(net), tokens * (2 if self.cfg != 1.0 else 1), dtype_bytes)
        models = [patched] + ([self.encoder.patcher] if self.encoder is not None else [])
        comfy.model_management.load_models_gpu(models, memory_required=needed)


def model_identity(model_patcher) -> str:
    """A cheap fingerprint of the DiT's weights for resumable runs: a few tensors, not gigabytes."""
    digest = hashlib.sha1()
    state = model_patcher.model.diffusion_model.state_dict()
    for name in ("patch_embedding.weight", "head.head.weight", "blocks.0.self_attn.q.weight"):
        if name in state:
            digest.update(state[name].float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]
