"""Camera-anchored context: the storyboard's pans as positions in the world, not on the screen.

A pan moves the view over a world wider than it, so a place that stays put in the world sits at another screen
column in every frame. With a pair's `camera_speed` (DiT tokens the view moves per frame of a pan caption), a
token's rotary w position is its screen column plus the view's position: the same place has the same position in
every frame, and continuing a pan, or coming back to a view the history holds, is attention at zero offset, which
a small DiT learns where a shift that changes every frame it does not. A chunk's flow then starts from the last
frame moved with the camera (`reproject`), as GEN3C renders its cache into the new view; what comes into view is
what left the other side (the frame wrapped), so the start keeps a texture that moves with the camera for the DiT
to correct (the tiny pair leaves a hazy copy there; a flat fill at the frame's mean left a grey field in which no
motion shows, and followed the storyboard's pans less often: docs/drift_defences.md).
This is the pure-translation case of cameras as relative positional encodings (PRoPE, Li et al. 2025). Speed 0
keeps screen positions, as Wan has them.
"""
from __future__ import annotations

from typing import Sequence

import torch

# the pan words of the story world's vocabulary, after pfp_core.generation.storyboard.resolve_camera_returns has
# given each return its way back; a caption with none of them holds the camera
PAN_WORDS = {"pans left": -1, "pans right": 1, "comes back left": -1, "comes back right": 1}


def caption_pan(caption: str) -> int:
    """-1, 0 or +1: the way a caption moves the view (its left edge, in the world)."""
    text = caption.lower()
    return next((way for words, way in PAN_WORDS.items() if words in text), 0)


def camera_path(captions: Sequence[str], speed: float) -> torch.Tensor:
    """float [T]: the view's position in DiT tokens at each frame, each frame one step of `speed` from the frame
    before in the way its own caption pans (the story world's camera). Only differences between frames matter:
    rotary positions are relative."""
    steps = torch.tensor([float(caption_pan(caption)) for caption in captions]) * speed
    return torch.cumsum(steps, 0)


def path_at(path: torch.Tensor, times: torch.Tensor) -> torch.Tensor:
    """A per-frame path [B or 1, T] (the camera's, or a moving object's: model.objects) read at latent times [L]
    or [B, L] (fractional times interpolate: a memory token sits at the centre of the frames it summarises)
    -> [B, L]."""
    times = times.float().to(path.device)
    if times.dim() == 1:
        times = times.expand(path.shape[0], -1)
    path = path.float().expand(times.shape[0], -1)
    lower = times.floor().clamp(0, path.shape[1] - 1)
    upper = times.ceil().clamp(0, path.shape[1] - 1)
    weight = times - times.floor()
    return path.gather(1, lower.long()) * (1 - weight) + path.gather(1, upper.long()) * weight


def world_positions(positions: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
    """Token positions [L, 3] or [B, L, 3] (t, h, w) with w moved by the view's position at t -> [B, L, 3]."""
    moved = path_at(camera, positions[..., 0])
    world = positions.expand(moved.shape[0], -1, -1).clone()
    world[..., 2] += moved.to(world)
    return world


def reproject(latent: torch.Tensor, moves: torch.Tensor) -> torch.Tensor:
    """latent [B, C, 1, h, w] seen from views moved right by `moves` [B, T] latent cells -> [B, C, T, h, w]: the
    content shifts the other way and the columns that leave one side come in on the other."""
    width = latent.shape[-1]
    frames = []
    for move in moves.round().long().unbind(1):
        columns = (torch.arange(width, device=latent.device) + move.to(latent.device)[:, None]) % width  # [B, w]
        frames.append(latent.gather(-1, columns[:, None, None, None, :].expand_as(latent)))
    return torch.cat(frames, dim=2)
