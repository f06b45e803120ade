"""Assembles the engine for the command line: the embedded tiny models, the flow chunk sampler, and one
function that turns (start image, storyboard, seconds) into a video file."""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from .. import limits
from ..config import DEFAULT_SAMPLING_STEPS
from ..model.checkpoint import check_compatible, load_dit, load_encoder
from .chunk_store import ChunkStore
from ..model.dit import ContextCache, WanDiT
from ..model.encoder import MemoryEncoder
from ..model.flow import guided, sample, sampling_sigmas
from .generator import AutoregressiveGenerator, Callbacks, GenerationRequest, GenerationResult, frame_grid
from ..model.context import ContextCompressor
from ..model.memory import Memory
from .storyboard import parse_storyboard, plan_chunks
from ..model.text import HashTextEncoder, TextEncoder
from ..model.vae import VAE, SpaceToDepthVAE
from ..video_io import resize_frames, write_video

WEIGHTS = Path(__file__).parents[1] / "weights"  # pfp_core/weights: ComfyUI and packaging find it there
DEFAULT_ENCODER = WEIGHTS / "encoders" / "pfp_tiny_encoder.safetensors"
DEFAULT_DIT = WEIGHTS / "diffusion_models" / "pfp_tiny_dit.safetensors"  # also listed by ComfyUI's UNET loader
# The sliding-window baseline, trained by the same recipe with recent frames only: what eval-continuation compares to.
BASELINE_ENCODER = WEIGHTS / "encoders" / "pfp_tiny_sliding_window.safetensors"
BASELINE_DIT = WEIGHTS / "diffusion_models" / "pfp_tiny_sliding_window_dit.safetensors"


@dataclass
class SamplerSettings:
    steps: int = DEFAULT_SAMPLING_STEPS
    cfg: float = 1.0
    shift: float = 1.0
    solver: str = "euler"
    negative_prompt: str = ""

    def __post_init__(self) -> None:
        if not 1 <= self.steps <= 1000:
            raise ValueError(f"steps: {self.steps} is out of range; use 1 to 1000")
        if not (0.0 <= self.cfg <= 30.0):
            raise ValueError(f"cfg: {self.cfg} is out of range; use 0 to 30 (1 = no guidance)")
        if not self.shift > 0:
            raise ValueError(f"shift: must be positive, got {self.shift}")


class FlowChunkSampler:
    """pfp_core's own chunk sampler: rectified flow with CFG over the standalone DiT."""

    def __init__(self, dit: WanDiT, text_encoder: TextEncoder, settings: SamplerSettings):
        self.dit, self.text_encoder, self.settings = dit, text_encoder, settings

    def __call__(self, memory: Memory, frame_times: torch.Tensor, prompt: str, latent_shape: tuple[int, ...],
                 seed: int, on_step: Callable[[int, int, torch.Tensor], None]) -> torch.Tensor:
        s = self.settings
        device = next(self.dit.parameters()).device  # a DiT on a GPU samples there
        cache = ContextCache()  # one chunk: the clean context's keys and values serve every step and both halves
        cond = self._velocity(self.text_encoder.encode([prompt]).to(device), memory, frame_times, cache)
        uncond = self._velocity(self.text_encoder.encode([s.negative_prompt]).to(device), memory, frame_times, cache)
        # drawn on the CPU generator whatever the device, so a GPU draws the same noise as the CPU
        noise = torch.randn(latent_shape, generator=torch.Generator().manual_seed(seed)).to(device)
        noise = memory.flow_start(noise)
        with torch.no_grad():
            return sample(guided(cond, uncond, s.cfg), noise, sampling_sigmas(s.steps, s.shift), s.solver, on_step)

    def _velocity(self, context: torch.Tensor, memory: Memory, frame_times: torch.Tensor, cache: ContextCache):
        return lambda x, sigma: self.dit(x, sigma.to(x.device) * 1000, context, memory, frame_times,
                                         context_cache=cache)


@dataclass
class Engine:
    dit: WanDiT
    encoder: MemoryEncoder
    vae: VAE
    text_encoder: TextEncoder

    @property
    def fps(self) -> int:
        return self.encoder.config.fps

    @property
    def chunk_frames(self) -> int:
        """The chunk length the pair was finetuned for (1 s when its encoder does not record one)."""
        return self.encoder.config.chunk_frames or self.fps

    @property
    def sampling_steps(self) -> int:
        """The Euler steps per chunk the pair was finetuned to sample with (12 when its encoder records none)."""
        return self.encoder.config.sampling_steps or DEFAULT_SAMPLING_STEPS

    def steps_for(self, requested: int | None) -> int:
        """The sampling steps a run uses: those asked for, else the pair's own."""
        return requested or self.sampling_steps

    def memory_updater(self) -> ContextCompressor:
        """A fresh context compressor for one run: recent frames plus incrementally updated memory."""
        return ContextCompressor(self.encoder.config, torch.no_grad()(self.encoder), self.fps,
                                 self.vae.config.temporal_factor)

    def identity(self) -> str:
        """Short digest of the weights: part of a run's fingerprint."""
        digest = hashlib.sha1()
        for module in (self.dit, self.encoder):
            for name, tensor in sorted(module.state_dict().items()):
                digest.update(name.encode())
                digest.update(tensor.detach().float().numpy().tobytes())
        return digest.hexdigest()[:16]


def load_engine(encoder_path: str | Path | None = None, dit_path: str | Path | None = None) -> Engine:
    dit = load_dit(dit_path or DEFAULT_DIT)
    encoder = load_encoder(encoder_path or DEFAULT_ENCODER)
    check_compatible(encoder.config, dit.config)
    if dit.config.vae != "space_to_depth":
        raise ValueError(f"dit: {dit.config.name} needs the {dit.config.vae} VAE, which runs inside ComfyUI; "
                         "the command line only runs the tiny model")
    text_encoder = HashTextEncoder(dit.config.text_dim, dit.config.text_len, encoder.config.text_padding)
    return Engine(dit, encoder, SpaceToDepthVAE(), text_encoder)


def image_to_pixels(image: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
    """uint8 [H, W, 3] (or [T, H, W, 3]) -> [1, 3, T, h, w] in [-1, 1], centre-cropped to the aspect then resized."""
    frames = image[None] if image.ndim == 3 else image
    height, width = size
    h, w = frames.shape[1:3]
    scale = min(h / height, w / width)
    crop_h, crop_w = round(height * scale), round(width * scale)
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    frames = resize_frames(frames[:, top:top + crop_h, left:left + crop_w], height, width)
    pixels = torch.from_numpy(frames).float().div(127.5).sub(1)
    return pixels.permute(3, 0, 1, 2)[None]


@dataclass
class VideoSettings:
    seconds: float
    chunk_seconds: float = 1.0
    history_seconds: float = 20.0
    seed: int = 0
    size: tuple[int, int] = (32, 32)

    def __post_init__(self) -> None:
        for name in ("seconds", "chunk_seconds", "history_seconds"):
            limits.check_range(name.replace("_", "-"), getattr(self, name), 0, limits.MAX_VIDEO_SECONDS, " seconds")
        limits.check_seed("seed", self.seed)


def generate(engine: Engine, start_image: np.ndarray, storyboard_text: str, video: VideoSettings,
             sampler: SamplerSettings, out_folder: Path, callbacks: Callbacks | None = None,
             global_prompt: str = "") -> GenerationResult:
    """Generate (or resume) a video in `out_folder`: chunks land there one by one."""
    fps = engine.fps
    total_frames, chunk_frames = frame_grid(video.seconds, video.chunk_seconds, fps)
    if total_frames < 2:  # the start image is frame 0
        raise ValueError(f"seconds: {video.seconds:g} s is {total_frames} frames at {fps} fps; ask for at least "
                         f"{2 / fps:g} s")
    plan = plan_chunks(parse_storyboard(storyboard_text, global_prompt), total_frames / fps, chunk_frames / fps)
    pixels = image_to_pixels(start_image, video.size)
    fingerprint = {"weights": engine.identity(), "sampler": asdict(sampler), "video": asdict(video),
                   "prompts": [c.prompt for c in plan], "start": hashlib.sha1(pixels.numpy().tobytes()).hexdigest()}
    request = GenerationRequest(pixels, [c.prompt for c in plan], total_frames, chunk_frames,
                                round(video.history_seconds * fps), video.seed, sampler.steps,
                                engine.encoder.config.latent_stride[0], camera_speed=engine.encoder.config.camera_speed,
                                object_speed=engine.encoder.config.object_speed)
    generator = AutoregressiveGenerator(engine.memory_updater(), FlowChunkSampler(engine.dit, engine.text_encoder, sampler),
                                        engine.vae, ChunkStore(out_folder, fingerprint), callbacks)
    return generator.run(request)


def write_result(result: GenerationResult, path: Path, fps: float) -> Path:
    return write_video(result.frames.numpy(), path, fps)
