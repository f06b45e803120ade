"""Training clips from a folder of the user's own videos (`--data DIR`).

Every mp4/webm/mov file under the folder (any depth, any letter case; hidden files such as ".clip.mp4" or macOS
"._clip.mp4" are ignored) is probed once: its first frame is decoded and its last seconds are decoded to find
the real end, so a file whose index claims more than its data holds is measured by its data. Unreadable,
corrupt and too-short files are skipped with one warning each and a summary line; a folder with no usable
video is a one-line error, and so is a file whose header claims frames over limits.MAX_SIDE per side (refused
before anything is decoded).

A clip is `frames` frames at the target fps starting at a whole target frame: frame k shows what is on screen at
time start + k / fps, i.e. the last source frame whose timestamp is at or before that time. Selecting by
timestamps (not by frame counts) gives the right seconds for 30 fps, 5 fps and variable-frame-rate files alike;
only the frames of the clip are decoded (seek, then decode forward), and each is centre-cropped to the target
aspect and resized as it comes, so neither the whole file nor full-size frames are held in RAM.

Captions: `clip.txt` beside `clip.mp4` holds a storyboard ("0s: woman stands by shelf" / "12s: woman pets cat",
syntax in pfp_core/generation/storyboard.py). Each target frame gets the prompt the sampler would give a chunk starting
there (plan_chunks with one-frame chunks), so training pairs frames with captions exactly as generation does.

Draws are uniform over usable videos long enough for the clip, then uniform over start frames, from the caller's
random.Random: the same (seed, step) gives the same clips, so a resumed run sees the same batches.
"""
from __future__ import annotations

import math
import os
import random
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from tqdm import tqdm

from .. import limits
from .procedural import to_pixels
from ..generation.storyboard import Storyboard, StoryboardError, parse_storyboard, plan_chunks
from ..video_io import VideoReadError, open_capture, resize_frames

VIDEO_SUFFIXES = (".mp4", ".webm", ".mov")
SEEK_MARGIN = 1.0  # s: OpenCV seeks by a frame number estimated from the average fps; land early, decode forward
END_SCAN = 2.0  # s: how much of the end a probe decodes to find the last frame
SLACK = 0.002  # s: containers round timestamps (Matroska to 1 ms)


@dataclass(frozen=True)
class VideoFile:
    path: Path
    start: float  # s, timestamp of the first frame
    frames: int  # whole target frames between the first and the last frame
    captions: tuple[str, ...]  # one per target frame; empty when there is no caption file

    def captions_of(self, first: int, count: int) -> list[str]:
        return list(self.captions[first:first + count]) if self.captions else [""] * count


@dataclass
class VideoClips:
    pixels: torch.Tensor  # float32 [B, 3, T, H, W] in [-1, 1]
    captions: list[list[str]]  # [B][T]: the caption active at each frame, "" where there is none


class VideoFolder:
    """The usable videos of a folder at a target fps and size; `clips` draws training batches from them."""

    def __init__(self, root: str | Path, fps: float, height: int, width: int, min_frames: int, progress: bool = False):
        self.root, self.fps, self.height, self.width = Path(root), float(fps), height, width
        self.videos: list[VideoFile] = []
        self.skipped: list[tuple[Path, str]] = []  # (file, short reason)
        self.failed: set[Path] = set()  # files that failed while drawing clips, each reported once
        paths = find_videos(self.root)
        for path in tqdm(paths, desc="scan videos", unit="file", disable=not progress):
            self._add(path, min_frames)
        report(f"--data: {self.summary()}")
        if not self.videos:
            raise ValueError(f"--data: no usable video in '{self.root}' ({self.summary()}); add mp4/webm/mov files "
                             f"of at least {seconds(min_frames, self.fps)} that OpenCV can decode")

    def _add(self, path: Path, min_frames: int) -> None:
        try:
            video = probe(path, self.fps)
        except VideoReadError as error:
            return self._skip(path, "unreadable", str(error))
        if video.frames < min_frames:
            return self._skip(path, "too short", f"too short ({seconds(video.frames, self.fps)} at {self.fps:g} fps, "
                                                 f"the shortest clip needs {seconds(min_frames, self.fps)})")
        try:
            self.videos.append(with_captions(video, self.fps))
        except StoryboardError as error:
            self._skip(path, "bad caption file", f"{caption_file(path).name}: {error}")

    def _skip(self, path: Path, reason: str, detail: str) -> None:
        self.skipped.append((path, reason))
        report(f"warning: --data: skipping {self.relative(path)}: {detail}")

    def relative(self, path: Path) -> str:
        return path.relative_to(self.root).as_posix()

    def summary(self) -> str:
        reasons = Counter(reason for _, reason in self.skipped)
        detail = ": " + ", ".join(f"{n} {reason}" for reason, n in sorted(reasons.items())) if reasons else ""
        return f"{len(self.videos)} videos usable, {len(self.skipped)} skipped{detail}"

    def captions(self) -> set[str]:
        """Every caption a clip can carry."""
        return {caption for video in self.videos for caption in video.captions}

    def check_fits(self, frames: int) -> list[VideoFile]:
        """The videos long enough for a clip of `frames`; an error naming the fix when there is none."""
        fitting = [video for video in self.videos if video.frames >= frames]
        if not fitting:
            longest = max(video.frames for video in self.videos)
            raise ValueError(f"--data: a clip of {frames} frames needs {seconds(frames, self.fps)} of video, the "
                             f"longest usable video in '{self.root}' has {seconds(longest, self.fps)}; lower "
                             "--history-frames or add longer videos")
        return fitting

    def clips(self, rng: random.Random, batch: int, frames: int) -> VideoClips:
        fitting = self.check_fits(frames)
        drawn = [self._draw(rng, fitting, frames) for _ in range(batch)]
        return VideoClips(to_pixels(np.stack([pixels for pixels, _ in drawn])), [captions for _, captions in drawn])

    def _draw(self, rng: random.Random, fitting: list[VideoFile], frames: int) -> tuple[np.ndarray, list[str]]:
        # A file that fails now (damage the probe missed) is reported once and another draw taken; the draws
        # stay a function of the rng alone, so resuming still reproduces them.
        for _ in range(4 * len(fitting)):
            video = fitting[rng.randrange(len(fitting))]
            first = rng.randrange(video.frames - frames + 1)
            try:
                pixels = read_clip(video, first, frames, self.fps, self.height, self.width)
                return pixels, video.captions_of(first, frames)
            except VideoReadError as error:
                if video.path not in self.failed:
                    self.failed.add(video.path)
                    report(f"warning: --data: {self.relative(video.path)}: {error}; drawing clips from other videos")
        raise ValueError(f"--data: clips of {frames} frames keep failing to decode in '{self.root}'; "
                         "re-encode the videos reported above or remove them")


def find_videos(root: Path) -> list[Path]:
    """mp4/webm/mov files under root, in a fixed order (the draws index into it)."""
    if not root.is_dir():
        raise ValueError(f"--data: '{root}' is not a folder; pass the folder that holds your mp4/webm/mov videos")
    paths = [p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES and not p.name.startswith(".")
             and p.is_file()]
    if not paths:
        raise ValueError(f"--data: no mp4/webm/mov files in '{root}'; point --data at the folder holding your videos")
    return sorted(paths, key=lambda p: p.relative_to(root).as_posix())


def probe(path: Path, fps: float) -> VideoFile:
    """First and last frame timestamps, from the first frame and the last END_SCAN seconds."""
    with open_capture(path) as capture:
        check_frame_size(capture, path)
        if not capture.grab():
            raise VideoReadError(f"video: no decodable frames in '{path}'")
        start = timestamp(capture)
        count, source_fps = capture.get(cv2.CAP_PROP_FRAME_COUNT), capture.get(cv2.CAP_PROP_FPS)
        estimate = count / source_fps if count > 0 and source_fps > 0 else 0.0
        capture.set(cv2.CAP_PROP_POS_MSEC, max(0.0, estimate - END_SCAN) * 1000)
        end = last_timestamp(capture)
    if end is None:  # nothing decodes near the claimed end (e.g. truncated data behind an intact index)
        with open_capture(path) as capture:
            end = last_timestamp(capture)
    frames = math.floor((max(start, end) - start + SLACK) * fps) + 1
    return VideoFile(path, start, frames, ())


def check_frame_size(capture: cv2.VideoCapture, path: Path) -> None:
    """Frames over limits.MAX_SIDE per side, as the container's header gives them, are refused before the first
    one is decoded: each would be decoded at full size before fit_frame shrinks it. Refused, not skipped: the
    folder is not what the user meant to train on."""
    width, height = int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)), int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))
    if max(width, height) > limits.MAX_SIDE:
        raise ValueError(f"--data: '{path}' has frames of {width}x{height} pixels, more than the limit of "
                         f"{limits.MAX_SIDE} per side; scale it down (e.g. ffmpeg -vf scale=1280:-2) or move it out "
                         "of the folder")


def timestamp(capture: cv2.VideoCapture) -> float:
    """Seconds of the frame just grabbed."""
    return capture.get(cv2.CAP_PROP_POS_MSEC) / 1000


def last_timestamp(capture: cv2.VideoCapture) -> float | None:
    end = None
    while capture.grab():
        end = timestamp(capture)
    return end


def caption_file(video: Path) -> Path:
    return video.with_suffix(".txt")


def read_storyboard(video: Path) -> Storyboard | None:
    """The video's caption storyboard, or None without a caption file."""
    path = caption_file(video)
    if not os.path.lexists(path):
        return None
    try:  # a FIFO or a huge file is refused, not waited for or read whole
        text = limits.read_capped(path, "caption", limits.MAX_TEXT_BYTES, "save the caption as a UTF-8 text file")
        return parse_storyboard(text.decode("utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise StoryboardError(f"cannot read it as UTF-8 text ({error})") from None
    except ValueError as error:
        raise StoryboardError(str(error)) from None


def with_captions(video: VideoFile, fps: float) -> VideoFile:
    storyboard = read_storyboard(video.path)
    if storyboard is None:
        return video
    plan = plan_chunks(storyboard, video.frames / fps, 1 / fps)
    return VideoFile(video.path, video.start, video.frames, tuple(chunk.prompt for chunk in plan))


def storyboard_captions(storyboard: Storyboard) -> set[str]:
    """Every prompt plan_chunks can give a chunk of this storyboard, whatever the video's length."""
    prompts = {", ".join(p for p in (storyboard.global_prompt, seg.prompt) if p) for seg in storyboard.segments}
    return prompts | ({storyboard.global_prompt} if storyboard.global_prompt else set())


def folder_captions(root: str | Path) -> list[str]:
    """The distinct captions of the caption files beside the videos under root; unreadable ones are reported."""
    root = Path(root)
    captions: set[str] = set()
    for video in find_videos(root):
        try:
            storyboard = read_storyboard(video)
        except StoryboardError as error:
            report(f"warning: --data: skipping {caption_file(video).relative_to(root).as_posix()}: {error}")
            continue
        captions |= storyboard_captions(storyboard) if storyboard else set()
    return sorted(captions)


def read_clip(video: VideoFile, first: int, count: int, fps: float, height: int, width: int) -> np.ndarray:
    """uint8 RGB [count, height, width, 3]: target frames first .. first+count-1."""
    times = video.start + (first + np.arange(count)) / fps
    with open_capture(video.path) as capture:
        capture.set(cv2.CAP_PROP_POS_MSEC, max(0.0, times[0] - SEEK_MARGIN) * 1000)
        frames = frames_on_screen(capture, times, height, width)
    if frames is None:  # the seek went past the clip start: decode from the beginning instead
        with open_capture(video.path) as capture:
            frames = frames_on_screen(capture, times, height, width)
    if frames is None or len(frames) < count:
        raise VideoReadError(f"decoding stopped before {times[-1]:.2f} s")
    return np.stack(frames)


def frames_on_screen(capture: cv2.VideoCapture, times: np.ndarray, height: int, width: int) -> list[np.ndarray] | None:
    """For each time (ascending), the last frame with a timestamp at or before it, fitted to height x width.
    Stops early when decoding ends; None when the first decoded frame comes after times[0]."""
    fitted: list[np.ndarray] = []
    current, current_time = None, -math.inf
    while len(fitted) < len(times):
        grabbed = capture.grab()
        if grabbed:  # the frame on screen so far covers every time before the new one
            due = int(np.searchsorted(times, timestamp(capture) - SLACK, side="left"))
        else:  # end of data: the last frame covers the times at its own timestamp
            due = int(np.searchsorted(times, current_time + SLACK, side="right"))
        if due > len(fitted):
            if current is None:
                return None
            fitted += [fit_frame(current, height, width)] * (due - len(fitted))
        if not grabbed:
            break
        current_time = timestamp(capture)
        ok, current = capture.retrieve()
        if not ok:
            break
    return fitted


def fit_frame(frame: np.ndarray, height: int, width: int) -> np.ndarray:
    """BGR frame of any size -> RGB [height, width, 3]: centre crop to the target aspect, then resize (no
    stretching, no borders)."""
    h, w = frame.shape[:2]
    crop_h = max(1, min(h, round(w * height / width)))
    crop_w = max(1, min(w, round(h * width / height)))
    top, left = (h - crop_h) // 2, (w - crop_w) // 2
    rgb = cv2.cvtColor(frame[top:top + crop_h, left:left + crop_w], cv2.COLOR_BGR2RGB)
    return resize_frames(rgb[None], height, width)[0]


def seconds(frames: int, fps: float) -> str:
    return f"{frames / fps:.2f} s"


def report(line: str) -> None:
    """One line on stderr that does not break a running progress bar."""
    tqdm.write(line, file=sys.stderr)
