"""Memory nodes: compress a history into PFP_MEMORY, apply it to a Wan model for any stock sampler, and retrieve a
past frame from it (the paper's white-box check that the memory holds what it should)."""
from __future__ import annotations

import torch
import comfy.samplers
from comfy_api.latest import io

from ..pfp_core.inputs import finite
from ..pfp_core.model.memory import Memory
from .adapters import ComfyChunkSampler, ComfyVAE
from .types import MemoryEncoderType, MemoryType
from .wan_memory import MemoryInjection, with_memory


def history_latents(vae, model_latent_format, images: torch.Tensor | None, latent: dict | None,
                    channels: int) -> torch.Tensor:
    """IMAGE [T, H, W, 3] or LATENT {"samples": [1, C, t, h, w]} -> normalised latents [1, C, t, h, w]."""
    if latent is not None:
        samples = latent["samples"]
        if samples.ndim != 5 or samples.shape[1] != channels or samples.shape[2] == 0:
            raise ValueError(f"latent: expected a video latent [1, {channels}, frames, h, w] with at least one frame, "
                             f"got {list(samples.shape)}; encode the history with the VAE of the encoder's base model")
        finite(latent=samples)
        return model_latent_format.process_in(samples.float().cpu())
    if images is None or images.shape[0] == 0:
        raise ValueError("history: no frames; connect images (or a latent) holding at least one frame")
    finite(images=images)
    return ComfyVAE(vae, model_latent_format).encode(images[..., :3].movedim(-1, 0)[None] * 2 - 1)


class CompressHistory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPCompressHistory", display_name="PFP Compress History", category="PFP",
            description="Compresses video frames (or their latent) into memory tokens for a Wan model.",
            inputs=[MemoryEncoderType.Input("memory_encoder"), io.Vae.Input("vae"), io.Model.Input("model"),
                    io.Image.Input("images", optional=True), io.Latent.Input("latent", optional=True),
                    io.Float.Input("fps", default=16.0, min=1.0, max=120.0)],
            outputs=[MemoryType.Output(display_name="memory")])

    @classmethod
    def execute(cls, memory_encoder, vae, model, fps: float, images=None, latent=None) -> io.NodeOutput:
        finite(fps=fps)
        memory_encoder.check_model(model)
        latents = history_latents(vae, model.model.latent_format, images, latent, memory_encoder.config.in_channels)
        if latents.shape[1] != memory_encoder.config.in_channels:
            raise ValueError(f"vae: gives {latents.shape[1]} latent channels, the encoder expects "
                             f"{memory_encoder.config.in_channels}; use the VAE of the encoder's base model")
        temporal = vae.temporal_compression_decode() or 1
        memory = memory_encoder.compress(latents, fps, temporal)
        text = f"{memory.token_count} memory tokens for {memory.seconds:.2f} s ({memory.latent_frames} latent frames)"
        return io.NodeOutput(memory, ui={"text": [text]})


class ApplyMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPApplyMemory", display_name="PFP Apply Memory", category="PFP",
            description="Injects memory into a Wan model; sample the next chunk with any stock sampler.",
            inputs=[io.Model.Input("model"), MemoryType.Input("memory")],
            outputs=[io.Model.Output(display_name="model")])

    @classmethod
    def execute(cls, model, memory: Memory) -> io.NodeOutput:
        # the chunk continues right after the compressed history
        return io.NodeOutput(with_memory(model, MemoryInjection(memory, memory.latent_frames)))


class RetrieveFrame(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPRetrieveFrame", display_name="PFP Retrieve Frame", category="PFP",
            description="Regenerates the frame at a past time from memory alone: a check of what memory holds.",
            inputs=[io.Model.Input("model"), io.Vae.Input("vae"), MemoryType.Input("memory"),
                    io.Conditioning.Input("positive"), io.Conditioning.Input("negative"),
                    io.Float.Input("time_seconds", default=0.0, min=0.0, max=3600.0, step=0.05),
                    io.Float.Input("fps", default=16.0, min=1.0, max=120.0),
                    io.Int.Input("width", default=832, min=8, max=8192, step=8),
                    io.Int.Input("height", default=480, min=8, max=8192, step=8),
                    io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF),
                    io.Int.Input("steps", default=20, min=1, max=1000),
                    io.Float.Input("cfg", default=1.0, min=0.0, max=30.0),
                    io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                    io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple")],
            outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, model, vae, memory: Memory, positive, negative, time_seconds: float, fps: float, width: int,
                height: int, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str) -> io.NodeOutput:
        finite(time_seconds=time_seconds, fps=fps, cfg=cfg)
        adapter = ComfyVAE(vae, model.model.latent_format)
        frame = int(time_seconds * fps) // adapter.config.temporal_factor
        if not 0 <= frame < memory.latent_frames:
            raise ValueError(f"time_seconds: {time_seconds} s is outside the memory (0 to {memory.seconds:.2f} s)")
        factor = adapter.config.spatial_factor
        shape = (1, adapter.config.latent_channels, 1, height // factor, width // factor)
        # the same chunk sampler as the Autoregressive Sampler, asked for one frame at a past time
        sampler = ComfyChunkSampler(model, {"": positive}, negative, steps, cfg, sampler_name, scheduler)
        latents = sampler(memory, torch.tensor([[frame]]), "", shape, seed, on_step=lambda *_: None)
        image = adapter.decode(latents)
        return io.NodeOutput(((image[0].permute(1, 2, 3, 0) + 1) / 2).clamp(0, 1))
