"""Context injection: the single place where history enters a Wan DiT.

The context for a chunk has two parts: the most recent latent frames at full resolution (embedded by the DiT's
own patch embedding, as FramePack's 1x frames: the seam needs their detail) and the compressed memory of the
older history (the encoder's tokens: what makes 20 s fit in ~5k tokens). Both become tokens with their own 3D
rotary positions (`context_tokens`). In the joint pattern they are appended to the video tokens after patch
embedding, take part in every self-attention and are dropped before the head; in the clean-context pattern they
run as a stream of their own whose keys and values the video tokens attend to (pfp_core.model.dit.context_stream).
The standalone DiT and ComfyUI's WanModel both run `pfp_core.model.dit.wan_forward`, which calls these
functions, so an encoder trained here works unchanged there.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Sequence

import torch

from ..atomic import save_tensors
from ..config import CHANGE_STD
from .camera import camera_path, path_at, reproject, world_positions
from .objects import object_path
from .rope import grid_positions


def caption_paths(captions: Sequence[str], camera_speed: float,
                  object_speed: float) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """float [T] each, from per-frame captions, for a Memory's `camera` and `object_path`: the view's position
    (model.camera) and a moving object's shift (model.objects); None for a speed of 0."""
    path = lambda make, speed: make(captions, speed) if speed else None
    return path(camera_path, camera_speed), path(object_path, object_speed)


@dataclass
class Memory:
    """Compressed history phi(H).

    tokens: [B, M, dim] in the DiT's inner width. positions: [M, 3] centres (t, h, w) of the regions the tokens
    summarise, in latent cells, t counted from the first latent frame of the history window.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    latent_frames: int  # length of the history in latent frames
    seconds: float
    recent_latents: torch.Tensor | None = None  # [B, C, R, h, w]: the last R latent frames, clean, uncompressed
    recent_start: int = 0  # time position of the first recent frame, in latent frames from the window start
    patch_size: tuple[int, int, int] = (1, 2, 2)  # the DiT's patch, which turns recent latents into tokens
    clean_context: bool = False  # the clean-context pattern (pfp_core.model.dit.context_stream), set by the encoder config
    anchor_noise: float | None = None  # the chunk's flow starts at the last recent latent (EncoderConfig.anchor_noise)
    predict_change: bool = False  # the DiT reads the chunk's change from the last recent latent (change_input)
    change_std: float = CHANGE_STD  # the spread of a change its velocity's skip assumes (change_skip)
    # [B or 1, T]: the view's position in DiT tokens at each latent time from the window's start through the chunk
    # after it (pfp_core.model.camera), which the generator or the training step attaches; None: screen positions
    camera: torch.Tensor | None = None
    # [B or 1, T] over the same times: the columns a captioned moving object has travelled from its rest place
    # (pfp_core.model.objects); the chunk's tokens read it, context tokens stay at shift 0; None: no shift
    object_path: torch.Tensor | None = None

    @property
    def reads_change(self) -> bool:
        """The DiT reads a chunk as its change from the last recent latent (retrieval, with none, reads it as is)."""
        return self.predict_change and self.recent_latents is not None

    @property
    def batch(self) -> int:
        return self.tokens.shape[0]

    @property
    def recent_token_count(self) -> int:
        if self.recent_latents is None:
            return 0
        return math.prod(n // p for n, p in zip(self.recent_latents.shape[2:], self.patch_size))

    @property
    def token_count(self) -> int:
        """Context tokens the DiT attends to: compressed memory plus recent frames."""
        return self.tokens.shape[1] + self.recent_token_count

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Memory":
        moved = lambda t: None if t is None else t.to(device=device, dtype=dtype)
        path = lambda t: None if t is None else t.to(device=device)
        return replace(self, tokens=moved(self.tokens), positions=self.positions.to(device=device),
                       recent_latents=moved(self.recent_latents), camera=path(self.camera),
                       object_path=path(self.object_path))

    def placed(self, positions: torch.Tensor) -> torch.Tensor:
        """Token positions [L, 3] or [B, L, 3] (t from the window's start) where the DiT reads them: in the world
        when the memory has a camera path, else on the screen as given."""
        return positions if self.camera is None else world_positions(positions, self.camera)

    def object_shift(self, frame_times: torch.Tensor, tokens_per_frame: int) -> torch.Tensor | None:
        """[B, T * tokens_per_frame]: the object shift of a chunk's tokens at latent times `frame_times` [B, T]
        (frame-major, as the DiT flattens them), or None when the memory has no object path."""
        if self.object_path is None:
            return None
        return path_at(self.object_path, frame_times).repeat_interleave(tokens_per_frame, dim=1)

    @property
    def window_length(self) -> int:
        """Latent frames of the history window: the chunk's first frame comes right after them."""
        return self.recent_start + self.recent_latents.shape[2]

    def flow_start(self, noise: torch.Tensor) -> torch.Tensor:
        """Where the chunk's flow starts, given standard noise [B, C, T, h, w]: the noise itself, or the last recent
        latent repeated over the chunk's frames plus the noise scaled by `anchor_noise`. A chunk mostly repeats the
        frame before it, so the DiT then learns the change, and a tiny model no longer has to redraw a whole scene
        from noise (the same velocity target, eps - x0, with this start as eps)."""
        if self.anchor_noise is None:
            return noise
        return self.last_latent(noise).expand(-1, -1, noise.shape[2], -1, -1) + self.anchor_noise * noise

    def last_latent(self, like: torch.Tensor) -> torch.Tensor:
        """The last recent latent on `like`'s device and dtype, for `like`'s batch: [B, C, 1, h, w], or with a
        camera path [B, C, T, h, w], seen from the view of each of the chunk's T frames (camera.reproject)."""
        last = self.repeat(like.shape[0]).recent_latents[:, :, -1:].to(like)
        if self.camera is None:
            return last
        times = torch.arange(self.window_length - 1, self.window_length + like.shape[2])
        views = path_at(self.camera, times).expand(like.shape[0], -1)
        return reproject(last, (views[:, 1:] - views[:, :1]) * self.patch_size[2])

    def repeat(self, batch: int) -> "Memory":
        """The same context for `batch` samples (e.g. the conditional and unconditional halves of CFG)."""
        if self.tokens.shape[0] == batch:
            return self
        recent = None if self.recent_latents is None else self.recent_latents.expand(batch, -1, -1, -1, -1)
        path = lambda t: None if t is None else t.expand(batch, -1)
        return replace(self, tokens=self.tokens.expand(batch, -1, -1), recent_latents=recent,
                       camera=path(self.camera), object_path=path(self.object_path))


def empty_memory(batch: int, dim: int, latent_frames: int = 0, seconds: float = 0.0) -> Memory:
    """No compressed tokens (a history too short to compress, or the sliding-window baseline)."""
    return Memory(torch.zeros(batch, 0, dim), torch.zeros(0, 3), latent_frames, seconds)


def with_recent(memory: Memory, window: torch.Tensor, recent_frames: int, patch_size: tuple[int, int, int]) -> Memory:
    """`memory` of the older part of `window` [B, C, T, h, w] plus its last `recent_frames` latents uncompressed."""
    kept = min(recent_frames, window.shape[2])
    if not kept:
        return memory
    return replace(memory, recent_latents=window[:, :, window.shape[2] - kept:], recent_start=window.shape[2] - kept,
                   patch_size=tuple(patch_size), latent_frames=max(memory.latent_frames, window.shape[2]))


def latent_to_token_positions(positions: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Latent-cell centres -> the DiT token grid, where token j covers cells [j*p, (j+1)*p)."""
    patch = torch.tensor(patch_size, dtype=positions.dtype, device=positions.device)
    return (positions - (patch - 1) / 2) / patch


def embed_recent(model: torch.nn.Module, memory: Memory, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Recent latents -> (tokens [B, R*h*w, dim], positions [B, R*h*w, 3]) through the DiT's own patch embedding,
    at the positions the DiT gives its own frames at those times."""
    latents = memory.repeat(batch).recent_latents
    tokens = model.patch_embedding(latents.float())
    times = torch.arange(tokens.shape[2], device=tokens.device) + memory.recent_start
    positions = grid_positions(times.expand(batch, -1), tokens.shape[3], tokens.shape[4])
    return tokens.flatten(2).transpose(1, 2), memory.placed(positions)


def context_tokens(model: torch.nn.Module, memory: Memory, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The context as tokens: recent-frame tokens, then memory tokens ([B, M, dim]), each with its token-grid
    positions ([B, M, 3])."""
    parts, where = [], []
    if memory.recent_latents is not None:
        recent_tokens, recent_positions = embed_recent(model, memory, batch)
        parts.append(recent_tokens)
        where.append(recent_positions)
    if memory.tokens.shape[1]:
        parts.append(memory.repeat(batch).tokens)
        positions = latent_to_token_positions(memory.positions.float(), tuple(model.patch_size))
        where.append(memory.placed(positions).expand(batch, -1, -1))
    device = parts[0].device  # float32 here; the caller casts to its own dtype
    return (torch.cat([part.to(device, torch.float32) for part in parts], dim=1),
            torch.cat([w.to(device, torch.float32) for w in where], dim=1))


def join_memory(model: torch.nn.Module, tokens: torch.Tensor, positions: torch.Tensor,
                memory: Memory | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Append the context to the video tokens, so both take part in every self-attention (the joint pattern)."""
    if memory is None or memory.token_count == 0:
        return tokens, positions
    context, where = context_tokens(model, memory, tokens.shape[0])
    return torch.cat((tokens, context.to(tokens)), dim=1), torch.cat((positions, where.to(positions)), dim=1)


def change_input(latents: torch.Tensor, memory: Memory | None) -> torch.Tensor:
    """What the DiT reads of the noisy chunk. With memory.predict_change, the chunk minus the last recent latent:
    a chunk that flows from that latent plus noise (Memory.flow_start) is then the flow of its change alone,
    x_t - last = (1 - s) change + s A eps, whose velocity A eps - change is the chunk's velocity too. So the
    target stays Wan's, any sampler (ComfyUI's included) works unchanged, and an unchanged region is plain
    denoising of its own token, with no copy of the last frame through attention. Retrieval (no recent frames)
    reads the latents as they are."""
    if memory is None or not memory.reads_change:
        return latents
    return latents - memory.last_latent(latents)


def change_skip(timestep: torch.Tensor, memory: Memory | None) -> torch.Tensor | None:
    """[B, 1, 1, 1, 1] weight of the change the DiT reads in its velocity, or None when it reads no change.
    On the change's flow d_t = (1 - s) d + s A eps with d ~ N(0, c^2) (c = change_std), the best linear guess of
    the velocity A eps - d from d_t is (s A^2 - (1 - s) c^2) / ((1 - s)^2 c^2 + s^2 A^2) d_t (EDM's skip,
    Karras et al. 2022). The DiT adds what that misses, so an unchanged region flows to the last frame without
    the DiT passing its input through all its layers."""
    if memory is None or not memory.reads_change:
        return None
    sigma, noise, spread = _change_flow(timestep, memory)
    return ((sigma * noise - (1 - sigma) * spread) / _read_variance(sigma, noise, spread)).view(-1, 1, 1, 1, 1)


def change_loss_weight(timestep: torch.Tensor, memory: Memory | None) -> torch.Tensor | None:
    """[B] weight of each sample's velocity error, or None when the DiT reads no change: one over the variance the
    skip leaves of the velocity, A^2 c^2 / ((1 - s)^2 c^2 + s^2 A^2) (EDM's loss weight). Without it the
    low-noise samples dominate the loss with an error that is mostly the frames' unpredictable sensor noise,
    while high noise, where the DiT must take the chunk's content from its context, gets little of the gradient."""
    if memory is None or not memory.reads_change:
        return None
    sigma, noise, spread = _change_flow(timestep, memory)
    return _read_variance(sigma, noise, spread) / (noise * spread)


def _change_flow(timestep: torch.Tensor, memory: Memory) -> tuple[torch.Tensor, float, float]:
    """(sigma [B], A^2, c^2) of the change's flow at a DiT timestep."""
    return timestep.float().flatten() / 1000, memory.anchor_noise ** 2, memory.change_std ** 2


def _read_variance(sigma: torch.Tensor, noise: float, spread: float) -> torch.Tensor:
    """Variance of the change read at sigma, (1 - s)^2 c^2 + s^2 A^2."""
    return (1 - sigma) ** 2 * spread + sigma ** 2 * noise


def drop_memory(tokens: torch.Tensor, video_token_count: int) -> torch.Tensor:
    """Memory tokens only inform the video tokens: the head never sees them."""
    return tokens[:, :video_token_count]


def save_memory(memory: Memory, path: str | Path) -> Path:
    """Safetensors with the history length (and where the recent frames start) in the metadata; written atomically."""
    tensors = {"tokens": memory.tokens.float(), "positions": memory.positions.float()}
    if memory.recent_latents is not None:
        tensors["recent_latents"] = memory.recent_latents.float()
    return save_tensors(tensors, path, {"pfp_kind": "memory", "latent_frames": str(memory.latent_frames),
                                        "seconds": str(memory.seconds), "recent_start": str(memory.recent_start),
                                        "patch_size": json.dumps(list(memory.patch_size)),
                                        "clean_context": json.dumps(memory.clean_context),
                                        "anchor_noise": json.dumps(memory.anchor_noise),
                                        "predict_change": json.dumps(memory.predict_change),
                                        "change_std": json.dumps(memory.change_std)})


def load_memory(path: str | Path) -> Memory:
    from ..tensor_files import CheckpointError, read_safetensors

    tensors, metadata = read_safetensors(path, "memory")
    if metadata.get("pfp_kind") != "memory" or {"tokens", "positions"} - set(tensors):
        raise CheckpointError(f"memory: {Path(path).name} is not a saved PFP memory; save one with PFP Save Memory")
    tokens, positions = tensors["tokens"], tensors["positions"]
    try:
        latent_frames, seconds = int(metadata["latent_frames"]), float(metadata["seconds"])
        anchor_noise = json.loads(metadata.get("anchor_noise", "null"))  # files saved before it existed: pure noise
        anchor_noise = None if anchor_noise is None else float(anchor_noise)
        change_std = float(json.loads(metadata.get("change_std", str(CHANGE_STD))))
    except (KeyError, ValueError, TypeError):  # refused below with the values it holds
        latent_frames, seconds, anchor_noise, change_std = -1, math.nan, None, CHANGE_STD
    if tokens.dim() != 3 or positions.shape != (tokens.shape[1], 3) or latent_frames < 0 or not math.isfinite(seconds):
        raise CheckpointError(f"memory: {Path(path).name} is damaged (tokens {list(tokens.shape)}, positions "
                              f"{list(positions.shape)}, latent_frames {metadata.get('latent_frames')!r}, seconds "
                              f"{metadata.get('seconds')!r}); save the memory again with PFP Save Memory")
    return Memory(tokens, positions, latent_frames, seconds, tensors.get("recent_latents"),
                  int(metadata.get("recent_start", 0)), tuple(json.loads(metadata.get("patch_size", "[1, 2, 2]"))),
                  metadata.get("clean_context") == "true", anchor_noise,
                  metadata.get("predict_change") == "true", change_std)
