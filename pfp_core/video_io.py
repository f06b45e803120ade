"""Video and image files in and out: uint8 RGB numpy arrays, no torch.

Writes are atomic (pfp_core.atomic): a crash never leaves a half-written file under the final name.

mp4v cannot encode odd sizes (the encoder silently drops the last row/column), so write_video pads odd
heights/widths by repeating the last row/column; reading such a video back gives the padded, even size.
Images go through imencode/imdecode plus Python file I/O because cv2.imread/imwrite fail on non-ASCII
paths on Windows. FFmpeg's own log lines ("moov atom not found") are silenced unless OPENCV_FFMPEG_LOGLEVEL is
set, and OpenCV's own `[ WARN ]` lines unless OPENCV_LOG_LEVEL is set: every failure is reported as one error
line instead. A written video is read back (its frame count) before it replaces the target, because OpenCV's
writer reports no write error (a full disk leaves a few kB that no player opens).
Start images are refused by file size and by the size in their header (pfp_core.limits) before decoding.
"""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import cv2
import numpy as np

from . import limits
from .atomic import replacing, write_bytes

os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "0")  # OpenCV reads it when it first opens a video
if "OPENCV_LOG_LEVEL" not in os.environ:
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)


class VideoReadError(ValueError):
    """A video file is missing, corrupt or unreadable."""


def write_video(frames: np.ndarray, path: str | Path, fps: float) -> Path:
    """Write uint8 RGB frames [T, H, W, 3] as an mp4 (fourcc mp4v)."""
    _check_shape(frames, "frames", "uint8 [T, H, W, 3]", ndim=4)
    if fps <= 0:
        raise ValueError(f"fps: expected a positive number, got {fps}")
    frames = _pad_to_even(frames)
    path = limits.check_utf8_path(path, "out")
    check = lambda written: _check_frame_count(written, len(frames), path)
    with replacing(path, keep_suffix=True, check=check) as temporary:  # OpenCV picks the container from the suffix
        height, width = frames.shape[1:3]
        writer = cv2.VideoWriter(str(temporary), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not writer.isOpened():
            raise OSError(f"out: cannot open an mp4v writer for {path}; choose a writable folder")
        for frame in frames:
            writer.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        writer.release()
    return path


def _check_frame_count(written: Path, frames: int, path: Path) -> None:
    """OSError unless `written` opens as a video of `frames` frames."""
    try:
        with open_capture(written) as capture:
            found = int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    except VideoReadError:
        found = 0
    if found != frames:
        raise OSError(f"out: cannot write {path} (the mp4 holds {found} of {frames} frames: the disk is full or a file "
                      f"size limit was reached); free space or choose another folder; any earlier {path.name} is kept")


def read_video(path: str | Path) -> tuple[np.ndarray, float]:
    """(uint8 RGB frames [T, H, W, 3], fps)."""
    with open_capture(path) as capture:
        fps = float(capture.get(cv2.CAP_PROP_FPS))
        frames = [cv2.cvtColor(frame, cv2.COLOR_BGR2RGB) for frame in _decoded_frames(capture)]
    if not frames:
        raise VideoReadError(f"video: no decodable frames in '{path}'")
    if fps <= 0:
        raise VideoReadError(f"video: no frame rate recorded in '{path}'")
    return np.stack(frames), fps


@contextmanager
def open_capture(path: str | Path) -> Iterator[cv2.VideoCapture]:
    """An opened cv2.VideoCapture, released on exit."""
    capture = cv2.VideoCapture(str(path))
    try:
        if not capture.isOpened():
            raise VideoReadError(f"video: cannot open '{path}' (missing, corrupt or unsupported)")
        yield capture
    finally:
        capture.release()


IMAGE_FIX = "give a PNG or JPEG file"


def load_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3]; grayscale is replicated to three channels and alpha is dropped. The file must be a
    regular file within limits.MAX_IMAGE_BYTES whose header (PNG or JPEG) claims at most MAX_SIDE per side."""
    data = np.frombuffer(limits.read_capped(path, "image", limits.MAX_IMAGE_BYTES, IMAGE_FIX), dtype=np.uint8)
    size = image_size(data.tobytes()[:2**16])
    if size is None:
        raise ValueError(f"image: '{path}' is not a readable image; {IMAGE_FIX}")
    if max(size) > limits.MAX_SIDE:
        raise ValueError(f"image: '{path}' is {size[0]}x{size[1]} pixels, more than the limit of {limits.MAX_SIDE} per "
                         "side; scale it down first")
    image = cv2.imdecode(data, cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"image: '{path}' is not a readable image; {IMAGE_FIX}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def image_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR or a JPEG's frame header, or None when `head` is neither."""
    if head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head[:2] == b"\xff\xd8":
        return _jpeg_size(head)
    return None


def _jpeg_size(head: bytes) -> tuple[int, int] | None:
    """Walks the JPEG markers up to the first start-of-frame (SOF0-SOF15 except DHT, JPG and DAC)."""
    offset = 2
    while offset + 9 <= len(head):
        if head[offset] != 0xFF:
            return None
        marker = head[offset + 1]
        if marker == 0xFF:  # fill byte
            offset += 1
        elif 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            offset += 2
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return int.from_bytes(head[offset + 7:offset + 9], "big"), int.from_bytes(head[offset + 5:offset + 7], "big")
        else:
            offset += 2 + int.from_bytes(head[offset + 2:offset + 4], "big")
    return None


def save_image(array: np.ndarray, path: str | Path) -> Path:
    """Write uint8 RGB [H, W, 3] as a PNG, atomically."""
    _check_shape(array, "image", "uint8 [H, W, 3]", ndim=3)
    ok, encoded = cv2.imencode(".png", cv2.cvtColor(array, cv2.COLOR_RGB2BGR))
    if not ok:
        raise OSError(f"image: PNG encoding failed for '{path}'")
    return write_bytes(path, encoded.tobytes())


def resize_frames(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize [T, H, W, C] frames: INTER_AREA when shrinking both sides (no aliasing), else INTER_CUBIC."""
    if height < 1 or width < 1:
        raise ValueError(f"size: expected a positive height and width, got {height}x{width}")
    if frames.ndim != 4:
        raise ValueError(f"frames: expected [T, H, W, C], got shape {frames.shape}")
    shrinking = height <= frames.shape[1] and width <= frames.shape[2]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_CUBIC
    resized = [cv2.resize(frame, (width, height), interpolation=interpolation) for frame in frames]
    # cv2 drops a trailing channel axis of size 1; restore it.
    return np.stack(resized).reshape(len(frames), height, width, frames.shape[3])


def _decoded_frames(capture: cv2.VideoCapture) -> Iterator[np.ndarray]:
    while True:
        ok, frame = capture.read()
        if not ok:
            return
        yield frame


def _pad_to_even(frames: np.ndarray) -> np.ndarray:
    pad_rows, pad_cols = frames.shape[1] % 2, frames.shape[2] % 2
    if not (pad_rows or pad_cols):
        return frames
    return np.pad(frames, ((0, 0), (0, pad_rows), (0, pad_cols), (0, 0)), mode="edge")


def _check_shape(array: np.ndarray, field: str, expected: str, ndim: int) -> None:
    if (not isinstance(array, np.ndarray) or array.dtype != np.uint8 or array.ndim != ndim
            or array.shape[-1] != 3 or 0 in array.shape):
        described = f"{array.dtype} {list(array.shape)}" if isinstance(array, np.ndarray) else type(array).__name__
        raise ValueError(f"{field}: expected {expected}, got {described}")


def contact_sheet(frames: np.ndarray, columns: int = 16) -> np.ndarray:
    """Every frame in a grid, enlarged 3x: the quickest way to look at a tiny video."""
    rows = -(-len(frames) // columns)
    padded = np.concatenate([frames, np.zeros((rows * columns - len(frames), *frames.shape[1:]), np.uint8)])
    grid = padded.reshape(rows, columns, *frames.shape[1:]).transpose(0, 2, 1, 3, 4)
    sheet = grid.reshape(rows * frames.shape[1], columns * frames.shape[2], 3)
    return sheet.repeat(3, axis=0).repeat(3, axis=1)
