"""Autoregressive Sampler: the whole long video in one execution, chunk by chunk, through ComfyUI's sampling."""
from __future__ import annotations

import torch
import comfy.model_management
import comfy.samplers
from comfy_api.latest import io

from ..pfp_core import limits
from ..pfp_core.errors import GenerationCancelled
from ..pfp_core.generation.generator import (AutoregressiveGenerator, GenerationRequest, chunk_spans, frame_grid,
                                             lead_frames, to_uint8)
from ..pfp_core.inputs import finite
from .adapters import ComfyChunkSampler, ComfyVAE, model_identity
from .run_video import ChunkVideo
from .sampler_run import RunFolder, progress_callbacks, start_hash
from .types import MemoryEncoderType, StoryboardType


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
                        "Chunks go to output/pfp/<run_name>/run_<settings>: the same settings resume, any change "
                        "starts a new run.",
            inputs=[io.Model.Input("model"), io.Vae.Input("vae"), MemoryEncoderType.Input("memory_encoder"),
                    StoryboardType.Input("storyboard"), io.Image.Input("start_image"),
                    io.Float.Input("history_seconds", default=20.0, min=0.1, max=600.0, step=0.5),
                    io.Int.Input("seed", default=0, min=0, max=limits.MAX_SEED, control_after_generate=True),
                    io.Int.Input("steps", default=20, min=1, max=1000),
                    io.Float.Input("cfg", default=5.0, min=0.0, max=30.0, step=0.1),
                    io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="euler"),
                    io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="simple"),
                    io.String.Input("run_name", default="pfp_run"),
                    io.Int.Input("keep_chunks", default=0, min=0, max=50_000, optional=True,
                                 tooltip="0: every chunk these settings allow. N: keep the first N chunks of the "
                                         "latest run of this name and generate the rest with these settings")],
            outputs=[io.Video.Output(display_name="video"), io.Latent.Output(display_name="latent")])

    @classmethod
    def execute(cls, model, vae, memory_encoder, storyboard, start_image: torch.Tensor, history_seconds: float,
                seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str, run_name: str,
                keep_chunks: int = 0) -> io.NodeOutput:
        finite(history_seconds=history_seconds, cfg=cfg, start_image=start_image)
        memory_encoder.check_model(model)
        latent_format = model.model.latent_format
        adapter = ComfyVAE(vae, latent_format)
        check_image_size(start_image, adapter.config.spatial_factor)
        total_frames, chunk_frames = frame_grid(storyboard.seconds, storyboard.chunk_seconds, storyboard.fps,
                                                adapter.config.temporal_factor)
        start = start_image[..., :3].movedim(-1, 0)[None].float() * 2 - 1
        spans = chunk_spans(total_frames, start.shape[2], chunk_frames, adapter.config.temporal_factor)
        # snapping to the VAE's 1 + 4k frames can add a chunk the storyboard did not plan: it keeps the last prompt
        prompts = [chunk.prompt for chunk in storyboard.chunks]
        prompts += prompts[-1:] * (len(spans) - len(prompts))
        fingerprint = {"model": model_identity(model), "encoder": memory_encoder.name, "seed": seed, "steps": steps,
                       "cfg": cfg, "sampler": sampler_name, "scheduler": scheduler, "prompts": prompts,
                       "negative": storyboard.negative_prompt, "fps": storyboard.fps,
                       "frames": [total_frames, chunk_frames], "history_seconds": history_seconds,
                       "start": start_hash(start)}
        request = GenerationRequest(start, prompts, total_frames, chunk_frames, round(history_seconds * storyboard.fps),
                                    seed, steps, memory_encoder.config.latent_stride[0], keep_frames=False,
                                    camera_speed=memory_encoder.config.camera_speed,
                                    object_speed=memory_encoder.config.object_speed)
        sampler = ComfyChunkSampler(model, storyboard.conditioning, storyboard.negative, steps, cfg, sampler_name,
                                    scheduler, memory_encoder)
        compress = memory_encoder.updater(storyboard.fps, adapter.config.temporal_factor)
        lead = lead_frames(adapter.config.temporal_factor)
        run = RunFolder.open(run_name, fingerprint, lambda frames: (frames - lead) // chunk_frames, keep_chunks)
        generator = AutoregressiveGenerator(compress, sampler, adapter, run.store, progress_callbacks())
        try:
            result = generator.run(request)
        except GenerationCancelled:
            comfy.model_management.throw_exception_if_processing_interrupted()
            raise
        chunks = [(span.index, span.frames) for span in spans]
        video = ChunkVideo(to_uint8(start), chunks, lambda index: run.store.load(index)[1], storyboard.fps)
        summary = "\n".join(filter(None, [run.summary(result, video.frame_count, storyboard.fps),
                                           memory_encoder.config.steps_warning(steps)]))
        return io.NodeOutput(video, {"samples": latent_format.process_out(result.latents)}, ui={"text": [summary]})
