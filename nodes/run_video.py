"""VIDEO from a run's chunks on disk: frames are read one chunk at a time, so writing a long video, or taking a
frame range of it, holds one chunk in RAM rather than the whole run."""
from __future__ import annotations

import json
from fractions import Fraction
from typing import Callable, Iterator

import av
import torch
from comfy_api.latest import Input, Types

ChunkLoader = Callable[[int], torch.Tensor]  # chunk index -> [T, H, W, 3] uint8 frames


class ChunkVideo(Input.Video):
    def __init__(self, start: torch.Tensor, chunks: list[tuple[int, int]], load_chunk: ChunkLoader, fps: float):
        """start: the start frames [T0, H, W, 3] uint8; chunks: (chunk index, frames) in order after them."""
        self.start, self.chunks, self.load_chunk, self.fps = start, chunks, load_chunk, fps

    @property
    def frame_count(self) -> int:
        return self.start.shape[0] + sum(length for _, length in self.chunks)

    def parts(self, first: int = 0, count: int | None = None) -> Iterator[torch.Tensor]:
        """uint8 frames [first, first + count) in pieces of at most one chunk; only overlapping chunks are read."""
        end = self.frame_count if count is None else min(first + count, self.frame_count)
        offset = 0
        for index, length in [(None, self.start.shape[0])] + self.chunks:
            lo, hi = max(first, offset), min(end, offset + length)
            if lo < hi:
                frames = self.start if index is None else self.load_chunk(index)
                yield frames[lo - offset:hi - offset]
            offset += length

    def frames(self, first: int = 0, count: int | None = None) -> torch.Tensor:
        """ComfyUI IMAGE (float 0..1) of a frame range; [0, H, W, 3] when the range is past the end."""
        parts = [part.float() / 255 for part in self.parts(first, count)]
        return torch.cat(parts) if parts else torch.zeros(0, *self.start.shape[1:])

    def get_components(self) -> Types.VideoComponents:
        return Types.VideoComponents(images=self.frames(), frame_rate=Fraction(round(self.fps * 1000), 1000))

    def get_dimensions(self) -> tuple[int, int]:
        return self.start.shape[2], self.start.shape[1]

    def get_duration(self) -> float:
        return self.frame_count / self.fps

    def get_container_format(self) -> str:
        return "mp4"

    def save_to(self, path, format=Types.VideoContainer.AUTO, codec=Types.VideoCodec.AUTO,
                metadata: dict | None = None) -> None:
        """H.264 in MP4 (the formats ComfyUI writes from frames), encoded chunk by chunk."""
        if format not in (Types.VideoContainer.AUTO, Types.VideoContainer.MP4) or \
                codec not in (Types.VideoCodec.AUTO, Types.VideoCodec.H264):
            raise ValueError("video: PFP videos save as mp4 with h264; pick format auto or mp4 and codec auto or h264")
        with av.open(path, mode="w", format="mp4", options={"movflags": "use_metadata_tags"}) as output:
            for key, value in (metadata or {}).items():
                output.metadata[key] = json.dumps(value)
            stream = output.add_stream("h264", rate=Fraction(round(self.fps * 1000), 1000))
            stream.width, stream.height = self.get_dimensions()
            stream.pix_fmt = "yuv420p"
            for part in self.parts():
                for frame in part.numpy():
                    output.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24").reformat(format="yuv420p")))
            output.mux(stream.encode(None))


def frame_range(video: Input.Video, start_seconds: float, seconds: float) -> tuple[torch.Tensor, float]:
    """IMAGE frames from start_seconds for `seconds` (0: to the end) and the fps; a run's video reads only the
    chunks the range covers, any other VIDEO is decoded whole."""
    whole = None if isinstance(video, ChunkVideo) else video.get_components()
    fps = video.fps if whole is None else float(whole.frame_rate)
    first, count = round(start_seconds * fps), round(seconds * fps) if seconds > 0 else None
    if whole is None:
        return video.frames(first, count), fps
    return whole.images[first:None if count is None else first + count], fps
