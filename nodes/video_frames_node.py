"""Video Frames: a frame range of a VIDEO as IMAGE, for pipelines that need frames (upscalers, a second sampler).
From the Autoregressive Sampler's video, only the chunks the range covers are read from disk."""
from __future__ import annotations

from comfy_api.latest import io

from .run_video import frame_range


class VideoFrames(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPVideoFrames", display_name="PFP Video Frames", category="PFP",
            description="Frames from start_seconds for `seconds` (0: to the end) of a video, as IMAGE. Only the "
                        "range is held in RAM.",
            inputs=[io.Video.Input("video"),
                    io.Float.Input("start_seconds", default=0.0, min=0.0, max=3600.0, step=0.1),
                    io.Float.Input("seconds", default=0.0, min=0.0, max=3600.0, step=0.1)],
            outputs=[io.Image.Output(display_name="images"), io.Float.Output(display_name="fps")])

    @classmethod
    def execute(cls, video, start_seconds: float, seconds: float) -> io.NodeOutput:
        images, fps = frame_range(video, start_seconds, seconds)
        if images.shape[0] == 0:
            raise ValueError(f"start_seconds: {start_seconds} s is past the video's end "
                             f"({video.get_duration():.2f} s)")
        return io.NodeOutput(images, fps)
