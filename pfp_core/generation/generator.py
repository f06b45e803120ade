"""The autoregressive loop: compress history -> sample the next chunk from memory -> decode -> append -> repeat.

The loop knows nothing of models or files: it is given a compressor (history latents -> Memory), a chunk sampler
(ComfyUI supplies its own), a VAE and optionally a ChunkStore. Video frames [k*C, (k+1)*C) form chunk k, which
lines chunks up with the storyboard plan; frames given as the start (an image or a clip) are never regenerated,
so N chunks give exactly the promised frames with nothing duplicated or dropped at a seam.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Protocol

import torch

from .chunk_store import ChunkStore
from ..errors import GenerationCancelled
from ..model.memory import Memory, caption_paths
from ..model.vae import VAE


class ChunkSampler(Protocol):
    def __call__(self, memory: Memory, frame_times: torch.Tensor, prompt: str, latent_shape: tuple[int, ...],
                 seed: int, on_step: Callable[[int, int, torch.Tensor], None]) -> torch.Tensor: ...


Compressor = Callable[[torch.Tensor, int], Memory]  # (window latents [1, C, T, h, w], its first frame) -> Memory


@dataclass(frozen=True)
class ChunkSpan:
    index: int
    first_frame: int  # first frame generated in this chunk
    end_frame: int  # one past the last frame of the chunk

    @property
    def frames(self) -> int:
        return self.end_frame - self.first_frame


CAUSAL_CONTEXT_LATENTS = 2  # history latents decoded before a chunk so its first frames are continuations


def lead_frames(temporal_factor: int) -> int:
    """A causal video VAE (Wan: 4x in time) encodes the first frame on its own, then `factor` frames per latent."""
    return 1 if temporal_factor > 1 else 0


def chunk_spans(total_frames: int, start_frames: int, chunk_frames: int, temporal_factor: int = 1) -> list[ChunkSpan]:
    """Chunk k covers video frames [L + k*C, L + (k+1)*C) (L = lead_frames), minus the frames the start provides."""
    if chunk_frames <= 0:
        raise ValueError(f"chunk_frames: must be positive, got {chunk_frames}")
    if total_frames <= start_frames:
        raise ValueError(f"seconds: the video ({total_frames} frames) must be longer than the start "
                         f"({start_frames} frames); ask for more seconds")
    check_causal_alignment(total_frames, start_frames, chunk_frames, temporal_factor)
    lead = lead_frames(temporal_factor)
    count = -(-(total_frames - lead) // chunk_frames)
    spans = [ChunkSpan(k, max(lead + k * chunk_frames, start_frames), min(lead + (k + 1) * chunk_frames, total_frames))
             for k in range(count)]
    return [span for span in spans if span.frames > 0]


def check_causal_alignment(total_frames: int, start_frames: int, chunk_frames: int, factor: int) -> None:
    """With time compression every generated latent must cover whole frames: 1 + f*k frames, chunks of f*k."""
    if factor == 1:
        return
    for name, count in (("start_image", start_frames), ("seconds", total_frames)):
        if (count - 1) % factor:
            raise ValueError(f"{name}: {count} frames; this VAE needs 1 + {factor}k frames (e.g. "
                             f"{count - (count - 1) % factor}); trim the clip or use frame_grid to pick the length")
    if chunk_frames % factor:
        raise ValueError(f"chunk_seconds: {chunk_frames} frames per chunk; this VAE needs a multiple of {factor}")


def frame_grid(seconds: float, chunk_seconds: float, fps: float, temporal_factor: int = 1) -> tuple[int, int]:
    """(total frames, frames per chunk), snapped to what the VAE can make: 1 + f*k frames and chunks of f*k.
    The storyboard is planned on these values, so its chunk k is the generator's chunk k."""
    for name, value in (("seconds", seconds), ("chunk_seconds", chunk_seconds), ("fps", fps)):
        if not math.isfinite(value) or value <= 0:
            raise ValueError(f"{name}: must be a positive finite number, got {value}")
    f = temporal_factor
    total, chunk = round(seconds * fps), max(1, round(chunk_seconds * fps))
    if f == 1:
        return total, chunk
    return 1 + f * max(1, round((total - 1) / f)), f * max(1, round(chunk / f))


def latent_paths(spans: list[ChunkSpan], request: GenerationRequest,
                 factor: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """float [latent frames] each, as the storyboard plans them (each frame as its chunk's prompt says; the given
    frames hold): the view's position (model.camera) and a moving object's shift (model.objects), None for a
    pair that reads neither."""
    captions = [""] * request.total_frames
    for span in spans:
        captions[span.first_frame:span.end_frame] = [request.prompts[span.index]] * span.frames
    paths = caption_paths(captions, request.camera_speed, request.object_speed)
    return tuple(None if path is None else path[::factor] for path in paths)  # latent k ends at frame k * factor


def chunk_seed(seed: int, index: int) -> int:
    """Each chunk's noise depends only on (seed, chunk), so a resumed run draws the same noise."""
    return (seed * 1_000_003 + index) % (2**63)


@dataclass
class Callbacks:
    on_progress: Callable[[int, int], None] = lambda done, total: None  # steps over the whole run
    on_preview: Callable[[int, torch.Tensor], None] = lambda chunk, pixels: None  # x0 estimate, pixels
    on_chunk: Callable[[int, torch.Tensor], None] = lambda chunk, frames: None  # finished chunk, uint8 frames
    should_cancel: Callable[[], bool] = lambda: False


@dataclass
class GenerationRequest:
    start_pixels: torch.Tensor  # [1, 3, T0, H, W] in [-1, 1]: the start image (T0 = 1) or clip
    prompts: list[str]  # one per chunk index (storyboard plan), covering all chunks
    total_frames: int
    chunk_frames: int
    window_frames: int  # history window in video frames (20 s by default)
    seed: int = 0
    steps_per_chunk: int = 1  # for progress accounting only
    slab_frames: int = 1  # memory cell length in latent frames: windows start on slab boundaries
    project_chunks: bool = True  # drift defence: a chunk joins the history as the VAE would encode its frames
    keep_frames: bool = True  # False: frames stay in the chunk store only, so RAM does not grow with the video
    camera_speed: float = 0.0  # the pair's EncoderConfig.camera_speed: > 0 places context in the world (model.camera)
    object_speed: float = 0.0  # the pair's EncoderConfig.object_speed: > 0 follows moving objects (model.objects)


@dataclass
class GenerationResult:
    frames: torch.Tensor  # [T, H, W, 3] uint8, exactly total_frames (none when the request keeps no frames)
    latents: torch.Tensor  # [1, C, t, h, w]
    resumed_chunks: int
    memory_tokens: list[int] = field(default_factory=list)


def to_uint8(pixels: torch.Tensor) -> torch.Tensor:
    """[1, 3, T, H, W] in [-1, 1] -> [T, H, W, 3] uint8."""
    return ((pixels[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0).contiguous()


class LatentHistory:
    """Latents of the video so far, kept chunk by chunk so that appending never copies the whole history."""

    def __init__(self, start_latents: torch.Tensor):
        self.parts, self.length = [start_latents], start_latents.shape[2]

    def append(self, latents: torch.Tensor) -> None:
        self.parts.append(latents.to(self.parts[0].dtype))
        self.length += latents.shape[2]

    def tail(self, frames: int) -> torch.Tensor:
        """The last `frames` latent frames (fewer if the history is shorter)."""
        taken, kept = 0, []
        for part in reversed(self.parts):
            if taken >= frames:
                break
            kept.append(part[:, :, -(frames - taken):])
            taken += kept[-1].shape[2]
        return torch.cat(kept[::-1], dim=2)

    def window(self, window_latents: int, slab: int) -> tuple[torch.Tensor, int]:
        """The most recent `window_latents` latent frames, starting on a slab boundary; returns (window, offset)."""
        start = max(0, self.length - window_latents)
        start -= start % slab
        return self.tail(self.length - start), start

    def all(self) -> torch.Tensor:
        return torch.cat(self.parts, dim=2)


class AutoregressiveGenerator:
    def __init__(self, compress: Compressor, sample_chunk: ChunkSampler, vae: VAE, store: ChunkStore | None = None,
                 callbacks: Callbacks | None = None):
        self.compress, self.sample_chunk, self.vae = compress, sample_chunk, vae
        self.store, self.callbacks = store, callbacks or Callbacks()

    def run(self, request: GenerationRequest) -> GenerationResult:
        """Generate (or resume) every chunk; the store's folder lock is released at the end, even on an error."""
        try:
            return self._run(request)
        finally:
            if self.store is not None:
                self.store.close()

    def _run(self, request: GenerationRequest) -> GenerationResult:
        factor = self.vae.config.temporal_factor
        spans = chunk_spans(request.total_frames, request.start_pixels.shape[2], request.chunk_frames, factor)
        if request.window_frames < factor:
            raise ValueError(f"history_seconds: the window holds {request.window_frames} frames and one latent frame "
                             f"needs {factor}; use a longer history")
        history = LatentHistory(self.vae.encode(request.start_pixels))
        frames = [to_uint8(request.start_pixels)] if request.keep_frames else []
        if len(request.prompts) < spans[-1].index + 1:
            raise ValueError(f"prompts: {len(request.prompts)} given for {spans[-1].index + 1} chunks; plan the storyboard "
                             "for the whole video")
        camera, objects = latent_paths(spans, request, factor)
        total_steps, resumed, token_counts = len(spans) * request.steps_per_chunk, 0, []
        for n, span in enumerate(spans):
            if self.store is not None and self.store.has(span.index):
                latents, chunk_frames = self.store.load(span.index, *self._stored_shapes(span, history, request))
                latents = latents[None]
                resumed += 1
            else:
                window, offset = history.window(request.window_frames // factor, request.slab_frames)
                memory = self.compress(window, offset)
                # the window's frames and the chunk's, from the window's start
                cut = lambda path: None if path is None else path[None, offset:history.length + span.frames // factor]
                memory = replace(memory, camera=cut(camera), object_path=cut(objects))
                token_counts.append(memory.token_count)
                latents = self._sample(span, memory, history.length - offset, window.shape, request, n, total_steps)
                chunk_frames = to_uint8(self.decode_continuation(history, latents))
                if request.project_chunks:
                    latents = self.project(chunk_frames, latents)
                if self.store is not None:
                    self.store.save(span.index, latents[0], chunk_frames)
                self.callbacks.on_chunk(span.index, chunk_frames)
            self.callbacks.on_progress((n + 1) * request.steps_per_chunk, total_steps)
            history.append(latents)
            if request.keep_frames:
                frames.append(chunk_frames)
        kept = torch.cat(frames) if frames else torch.empty(0, dtype=torch.uint8)
        return GenerationResult(kept, history.all(), resumed, token_counts)

    def _stored_shapes(self, span: ChunkSpan, history: LatentHistory,
                       request: GenerationRequest) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Shapes a stored chunk must have: latents [C, t, h, w], frames [T, H, W, 3]."""
        start = history.parts[0]
        latents = (start.shape[1], span.frames // self.vae.config.temporal_factor, *start.shape[3:])
        return latents, (span.frames, *request.start_pixels.shape[3:], 3)

    def decode_continuation(self, history: LatentHistory, latents: torch.Tensor) -> torch.Tensor:
        """Decode a chunk after its history. A causal VAE decodes a lone first latent as a single image frame, so
        the last latents of the history go in first as context and their frames are dropped."""
        factor = self.vae.config.temporal_factor
        if factor == 1:
            return self.vae.decode(latents)
        context = history.tail(CAUSAL_CONTEXT_LATENTS).to(latents.dtype)
        pixels = self.vae.decode(torch.cat((context, latents), dim=2))
        return pixels[:, :, -latents.shape[2] * factor:]

    def project(self, chunk_frames: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
        """A generated chunk as the VAE encodes its own 8-bit frames: in range, padding channels zero, exactly what
        a history of real video holds. Without time compression a chunk's frames encode on their own; a causal VAE
        (Wan) would need the history's frames too, so its chunks are kept as sampled."""
        if self.vae.config.temporal_factor != 1:
            return latents
        pixels = chunk_frames.permute(3, 0, 1, 2)[None].float() / 127.5 - 1
        return self.vae.encode(pixels).to(latents.dtype)

    def _sample(self, span: ChunkSpan, memory: Memory, first_time: int, window_shape: torch.Size,
                request: GenerationRequest, n: int, total_steps: int) -> torch.Tensor:
        latent_frames = span.frames // self.vae.config.temporal_factor
        shape = (1, window_shape[1], latent_frames, *window_shape[3:])
        frame_times = torch.arange(first_time, first_time + latent_frames)[None]

        def on_step(step: int, steps: int, x0_estimate: torch.Tensor) -> None:
            if self.callbacks.should_cancel():
                raise GenerationCancelled(f"cancelled during chunk {span.index}; finished chunks are kept")
            self.callbacks.on_progress(n * request.steps_per_chunk + step * request.steps_per_chunk // steps, total_steps)
            self.callbacks.on_preview(span.index, x0_estimate)

        return self.sample_chunk(memory, frame_times, request.prompts[span.index], shape,
                                 chunk_seed(request.seed, span.index), on_step)
