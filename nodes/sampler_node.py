"""Autoregressive Sampler: the whole long video in one execution, chunk by chunk, through ComfyUI's sampling."""
from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from PIL import Image
import comfy.model_management
import comfy.samplers
import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..pfp_core import limits
from ..pfp_core.chunk_store import ChunkStore
from ..pfp_core.errors import GenerationCancelled
from ..pfp_core.generator import AutoregressiveGenerator, Callbacks, GenerationRequest, chunk_spans, frame_grid
from ..pfp_core.inputs import finite, inside
from .adapters import ComfyChunkSampler, ComfyVAE, model_identity
from .types import MemoryEncoderType, StoryboardType


def run_folder(run_name: str) -> Path:
    """Chunks of a run live in output/pfp/<run_name>."""
    return inside(Path(folder_paths.get_output_directory()) / "pfp", run_name, "run_name")


def check_image_size(image: torch.Tensor, factor: int) -> None:
    """A size the VAE does not divide would be cropped in the latents but not in the start frames."""
    height, width = image.shape[1:3]
    if height % factor or width % factor:
        raise ValueError(f"start_image: {width}x{height} pixels; this VAE needs multiples of {factor}; resize or "
                         "crop it first (e.g. with Upscale Image)")


class AutoregressiveSampler(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPAutoregressiveSampler", display_name="PFP Autoregressive Sampler", category="PFP",
            description="Generates a long video chunk after chunk, each conditioned on the compressed history. "
                        "Finished chunks go to output/pfp/<run_name>; re-queueing resumes there.",
            inputs=[io.Model.Input("model"), io.Vae.Input("vae"), MemoryEncoderType.Input("memory_encoder"),
                    StoryboardType.Input("storyboard"), io.Image.Input("start_image"),
                    io.Float.Input("history_seconds", default=20.0, min=0.1, max=600.0, step=0.5),
                    io.Int.Input("seed", default=0, min=0, max=limits.MAX_SEED, control_after_generate=True),
                    io.Int.Input("steps", default=20, min=1, max=1000),
                    io.Float.Input("cfg", default=5.0, min=0.0, max=30.0, step=0.1),
                    io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                    io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple"),
                    io.String.Input("run_name", default="pfp_run")],
            outputs=[io.Image.Output(display_name="frames"), io.Latent.Output(display_name="latent")])

    @classmethod
    def execute(cls, model, vae, memory_encoder, storyboard, start_image: torch.Tensor, history_seconds: float,
                seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, run_name: str) -> io.NodeOutput:
        finite(history_seconds=history_seconds, cfg=cfg, start_image=start_image)
        memory_encoder.check_model(model)
        latent_format = model.model.latent_format
        adapter = ComfyVAE(vae, latent_format)
        check_image_size(start_image, adapter.config.spatial_factor)
        total_frames, chunk_frames = frame_grid(storyboard.seconds, storyboard.chunk_seconds, storyboard.fps,
                                                adapter.config.temporal_factor)
        start = start_image[..., :3].movedim(-1, 0)[None].float() * 2 - 1
        # snapping to the VAE's 1 + 4k frames can add a chunk the storyboard did not plan: it keeps the last prompt
        prompts = [chunk.prompt for chunk in storyboard.chunks]
        chunks = chunk_spans(total_frames, start.shape[2], chunk_frames, adapter.config.temporal_factor)[-1].index + 1
        prompts += prompts[-1:] * (chunks - len(prompts))
        fingerprint = {"model": model_identity(model), "encoder": memory_encoder.name, "seed": seed, "steps": steps,
                       "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler, "prompts": prompts,
                       "frames": [total_frames, chunk_frames], "history_seconds": history_seconds,
                       "start": hashlib.sha1(start.numpy().tobytes()).hexdigest()}
        request = GenerationRequest(start, prompts, total_frames, chunk_frames, round(history_seconds * storyboard.fps),
                                    seed, steps, memory_encoder.config.latent_stride[0])
        sampler = ComfyChunkSampler(model, storyboard.conditioning, storyboard.negative, steps, cfg, sampler_name,
                                    scheduler, memory_encoder)
        compress = memory_encoder.updater(storyboard.fps, adapter.config.temporal_factor)
        store = ChunkStore(run_folder(run_name), fingerprint, "run_name")
        generator = AutoregressiveGenerator(compress, sampler, adapter, store, progress_callbacks())
        try:
            result = generator.run(request)
        except GenerationCancelled:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        frames = result.frames.float() / 255
        summary = (f"{frames.shape[0]} frames, {len(result.memory_tokens) + result.resumed_chunks} chunks "
                   f"({result.resumed_chunks} resumed), memory tokens up to {max(result.memory_tokens, default=0)}")
        return io.NodeOutput(frames, {"samples": latent_format.process_out(result.latents)}, ui={"text": [summary]})


def progress_callbacks() -> Callbacks:
    """One progress bar over the whole run with the latest chunk's last frame as preview; caches are released
    between chunks; ComfyUI's interrupt stops between sampling steps."""
    bar = comfy.utils.ProgressBar(1)

    def on_chunk(index: int, frames: torch.Tensor) -> None:
        comfy.model_management.soft_empty_cache()
        preview = Image.fromarray(frames[-1].numpy())
        bar.update_absolute(bar.current, bar.total, ("JPEG", preview, 512))

    return Callbacks(on_progress=lambda done, total: bar.update_absolute(done, total), on_chunk=on_chunk,
                     should_cancel=comfy.model_management.processing_interrupted)
