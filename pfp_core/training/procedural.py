"""Deterministic procedural videos for training and testing a small video model with memory.

Each video is a view of a world canvas 3x the view wide and 1.5x high. The camera pans away from its start
view, holds, and pans back to exactly the start view; 2-4 textured objects swing around the start region, so
they leave the view (on their own and while the camera is away) and come back later. Only a real memory of
the past can restore their exact appearance, and the fine texture (period 2-3 px, below the 4x4 cells the
low-resolution branch pools) is what tells a good memory from a blurry one. Lighting is a per-video gain and
tint, constant over time. All sizes and speeds scale with the view size; speeds are set in px per second so
a video at another fps shows the same motion.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

TRAIN_SEEDS = range(0, 1_000_000)
HELDOUT_SEED_BASE = 1_000_000_000

# Top speeds, in view widths per second: a few px per frame at 32 px and 8 fps.
CAMERA_SPEED = 0.8  # 3.2 px/frame at 32 px, 8 fps
OBJECT_SPEED = 0.9  # 3.6 px/frame at 32 px, 8 fps


@dataclass
class ProceduralVideo:
    frames: np.ndarray  # uint8 [T, H, W, 3]
    object_masks: np.ndarray  # bool [T, H, W], True where any object is visible
    fps: int
    camera: np.ndarray  # int [T, 2]: the view's top-left corner (y, x) in the world


def heldout_seed(i: int) -> int:
    """The i-th evaluation seed; far above TRAIN_SEEDS so training never sees it."""
    if i < 0:
        raise ValueError(f"i: expected a non-negative index, got {i}")
    return HELDOUT_SEED_BASE + i


def make_video(seed: int, frames: int, size: int = 32, fps: int = 8, moving_camera: bool = True) -> ProceduralVideo:
    """The video of `seed`: the same seed always gives the same bytes. moving_camera=False holds the camera on
    the start view; the world, lighting and objects stay those of the same seed."""
    if frames < 1:
        raise ValueError(f"frames: expected at least 1, got {frames}")
    if size < 8:
        raise ValueError(f"size: expected at least 8 px, got {size}")
    if fps < 1:
        raise ValueError(f"fps: expected at least 1, got {fps}")
    rng = np.random.default_rng(seed)
    gain = _lighting(rng)
    world = _apply_lighting(_background(rng, world_height=size * 3 // 2, world_width=3 * size), gain)
    cam_y, cam_x = _camera_path(rng, frames, size, fps, world_shape=world.shape[:2])
    if not moving_camera:
        cam_y, cam_x = np.full_like(cam_y, cam_y[0]), np.full_like(cam_x, cam_x[0])
    video = _crop_views(world, cam_y, cam_x, size)
    masks = np.zeros(video.shape[:3], dtype=bool)
    for _ in range(int(rng.integers(2, 5))):
        sprite, shape = _object_sprite(rng, size)
        centre_y, centre_x = _object_path(rng, frames, size, fps, start_view=(cam_y[0], cam_x[0]))
        top, left = centre_y - cam_y - shape.shape[0] // 2, centre_x - cam_x - shape.shape[1] // 2
        _paste(video, masks, _apply_lighting(sprite, gain), shape, top, left)
    return ProceduralVideo(frames=video, object_masks=masks, fps=fps, camera=np.stack((cam_y, cam_x), axis=1))


def video_batch(seeds: Sequence[int], frames: int, size: int = 32, fps: int = 8) -> torch.Tensor:
    """float32 [B, 3, T, H, W] in [-1, 1], the engine's pixel convention."""
    return to_pixels(np.stack([make_video(seed, frames, size, fps).frames for seed in seeds]))


def to_pixels(frames: np.ndarray) -> torch.Tensor:
    """uint8 [B, T, H, W, 3] -> float32 [B, 3, T, H, W] in [-1, 1]."""
    pixels = torch.from_numpy(frames).float().div_(127.5).sub_(1.0)
    return pixels.permute(0, 4, 1, 2, 3).contiguous()


def _lighting(rng: np.random.Generator) -> np.ndarray:
    """Per-channel multiplier: a global gain times a colour tint."""
    return rng.uniform(0.75, 1.15) * rng.uniform(0.88, 1.12, size=3)


def _apply_lighting(rgb: np.ndarray, gain: np.ndarray) -> np.ndarray:
    return np.clip(rgb * gain, 0, 255).astype(np.uint8)


def _background(rng: np.random.Generator, world_height: int, world_width: int, pattern_fn=None,
                noise: float = 12.0) -> np.ndarray:
    """float [h, w, 3]: Voronoi colour regions, each with its own pattern (default: the fine one), plus per-pixel
    noise of +-`noise` levels."""
    pattern_fn = pattern_fn or _fine_pattern
    sites = rng.uniform(0, 1, size=(int(rng.integers(4, 8)), 2)) * (world_height, world_width)
    y, x = np.mgrid[0:world_height, 0:world_width]
    distances = (y[None] - sites[:, 0, None, None]) ** 2 + (x[None] - sites[:, 1, None, None]) ** 2
    region = distances.argmin(axis=0)
    colours = rng.uniform(40, 215, size=(len(sites), 3))
    patterns = np.stack([pattern_fn(rng, y, x) for _ in sites])  # [regions, h, w] in {-1, 1}
    amplitudes = rng.uniform(18, 30, size=len(sites))
    pattern = np.take_along_axis(patterns, region[None], axis=0)[0] * amplitudes[region]
    return colours[region] + pattern[..., None] + rng.uniform(-noise, noise, size=(world_height, world_width, 3))


def _fine_pattern(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """A +-1 pattern of period 2-3 px: stripes (horizontal, vertical, diagonal) or a 1 px checker."""
    period = int(rng.integers(2, 4))
    kind = int(rng.integers(0, 4))
    if kind == 3:
        return np.where((x + y) % 2 == 0, 1.0, -1.0)
    coordinate = (y, x, x + y)[kind]
    return np.where(coordinate % period == 0, 1.0, -1.0)


def _camera_path(rng: np.random.Generator, frames: int, size: int, fps: int,
                 world_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer top-left corners [T]: pan away, hold, pan back to exactly the start view, hold."""
    max_x, max_y = world_shape[1] - size, world_shape[0] - size
    pan = rng.uniform(0.25, 0.35) * frames
    hold = rng.uniform(0.1, 0.2) * frames
    distance = min(rng.uniform(0.8, 1.0) * max_x, CAMERA_SPEED * size / fps * pan)
    start_x = 0 if rng.random() < 0.5 else max_x
    end_x = start_x + distance if start_x == 0 else start_x - distance
    start_y, end_y = rng.uniform(0, max_y, size=2)
    times = np.arange(frames)
    keyframes = [0.0, pan, pan + hold, 2 * pan + hold]
    x = np.interp(times, keyframes, [start_x, end_x, end_x, start_x])
    y = np.interp(times, keyframes, [start_y, end_y, end_y, start_y])
    return np.rint(y).astype(int), np.rint(x).astype(int)


def _crop_views(world: np.ndarray, cam_y: np.ndarray, cam_x: np.ndarray, size: int) -> np.ndarray:
    """uint8 [T, size, size, 3]: every frame's window gathered in one indexing operation."""
    offsets = np.arange(size)
    rows = cam_y[:, None, None] + offsets[None, :, None]
    cols = cam_x[:, None, None] + offsets[None, None, :]
    return world[rows, cols]


def _object_sprite(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(float [h, w, 3] two-colour texture, bool [h, w] rectangle or ellipse shape)."""
    scale = size / 32
    height, width = (np.maximum(3, np.rint(rng.uniform(7, 14, size=2) * scale))).astype(int)
    y, x = np.mgrid[0:height, 0:width]
    if rng.random() < 0.5:
        shape = np.ones((height, width), dtype=bool)
    else:
        shape = ((y + 0.5 - height / 2) / (height / 2)) ** 2 + ((x + 0.5 - width / 2) / (width / 2)) ** 2 <= 1.0
    first = rng.uniform(0, 255, size=3)
    # At least 80 levels apart in every channel, so the texture never fades into one flat colour.
    colours = np.stack([first, (first + rng.uniform(80, 176, size=3)) % 256])
    return colours[_object_texture(rng, y, x).astype(int)], shape


def _object_texture(rng: np.random.Generator, y: np.ndarray, x: np.ndarray) -> np.ndarray:
    """bool [h, w]: stripes of random orientation, a checker, or dots, at period 2-4 px."""
    period = int(rng.integers(2, 5))
    kind = int(rng.integers(0, 3))
    if kind == 0:
        angle = rng.uniform(0, np.pi)
        return (x * np.cos(angle) + y * np.sin(angle)) % period < period / 2
    if kind == 1:
        cell = max(1, period // 2)
        return (y // cell + x // cell) % 2 == 0
    dot = max(1, period // 2)
    return (y % period < dot) & (x % period < dot)


def _object_path(rng: np.random.Generator, frames: int, size: int, fps: int,
                 start_view: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Integer world centres [T]: a horizontal swing wider than the view around the start view's centre,
    plus a small vertical bob. Periods are 3-7 s, lengthened where needed to respect OBJECT_SPEED."""
    seconds = np.arange(frames) / fps
    amplitude_x, amplitude_y = rng.uniform(0.55, 0.9) * size, rng.uniform(0.05, 0.2) * size
    period_x, period_y = rng.uniform(3, 7, size=2)
    # Peak speed of a sine is 2 pi A / P; horizontal and vertical share the speed budget 3:1.
    period_x = max(period_x, 2 * np.pi * amplitude_x / (0.75 * OBJECT_SPEED * size))
    period_y = max(period_y, 2 * np.pi * amplitude_y / (0.25 * OBJECT_SPEED * size))
    centre_y, centre_x = np.asarray(start_view) + size * (0.5 + rng.uniform(-0.3, 0.3, size=2))
    phase_x, phase_y = rng.uniform(0, 2 * np.pi, size=2)
    x = centre_x + amplitude_x * np.sin(2 * np.pi * seconds / period_x + phase_x)
    y = centre_y + amplitude_y * np.sin(2 * np.pi * seconds / period_y + phase_y)
    return np.rint(y).astype(int), np.rint(x).astype(int)


def _paste(video: np.ndarray, masks: np.ndarray, sprite: np.ndarray, shape: np.ndarray,
           top: np.ndarray, left: np.ndarray) -> None:
    """Draw a sprite whose top-left corner in frame t is (top[t], left[t]), clipped to the view, in place."""
    height, width = shape.shape
    rows = np.arange(video.shape[1])[None, :, None] - top[:, None, None]  # sprite row under each pixel
    cols = np.arange(video.shape[2])[None, None, :] - left[:, None, None]
    inside = (rows >= 0) & (rows < height) & (cols >= 0) & (cols < width)
    covered = inside & shape[np.clip(rows, 0, height - 1), np.clip(cols, 0, width - 1)]
    t, y, x = np.nonzero(covered)
    video[t, y, x] = sprite[y - top[t], x - left[t]]
    masks |= covered


def returned_frames(camera: np.ndarray) -> np.ndarray:
    """bool [T]: the camera (positions [T] or [T, axes]) is back on its start view after having left it."""
    at_start = (camera == camera[0]).reshape(len(camera), -1).all(axis=1)
    return at_start & np.maximum.accumulate(~at_start)
