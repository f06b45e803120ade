"""Storyboard Prompt: timestamped prompts -> per-chunk conditioning and a readable plan."""
from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..pfp_core.generator import frame_grid
from ..pfp_core.storyboard import ChunkPrompt, StoryboardError, format_plan, parse_storyboard, plan_chunks
from .types import StoryboardType


@dataclass
class StoryboardPlan:
    chunks: list[ChunkPrompt]
    conditioning: dict[str, list]  # prompt -> CONDITIONING
    negative: list
    seconds: float
    fps: float
    chunk_seconds: float


def plan(storyboard: str, global_prompt: str, seconds: float, fps: float, chunk_seconds: float) -> list[ChunkPrompt]:
    total_frames, chunk_frames = frame_grid(seconds, chunk_seconds, fps)
    return plan_chunks(parse_storyboard(storyboard, global_prompt), total_frames / fps, chunk_frames / fps)


def encode(clip, text: str) -> list:
    return clip.encode_from_tokens_scheduled(clip.tokenize(text))


class StoryboardPrompt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPStoryboardPrompt", display_name="PFP Storyboard Prompt", category="PFP",
            description="Timestamped prompts ('0s: ...', '12s: ...', '[5s-10s: ...]') planned per chunk.",
            inputs=[io.Clip.Input("clip"),
                    io.String.Input("storyboard", multiline=True, default="0s: a woman stands by a shelf\n12s: she pets a cat"),
                    io.String.Input("global_prompt", multiline=True, default=""),
                    io.String.Input("negative_prompt", multiline=True, default=""),
                    io.Float.Input("seconds", default=20.0, min=0.1, max=3600.0, step=0.1),
                    io.Float.Input("fps", default=16.0, min=1.0, max=120.0, step=1.0),
                    io.Float.Input("chunk_seconds", default=5.0, min=0.1, max=60.0, step=0.1)],
            outputs=[StoryboardType.Output(display_name="storyboard"), io.String.Output(display_name="plan")])

    @classmethod
    def validate_inputs(cls, storyboard: str, global_prompt: str, seconds: float, fps: float, chunk_seconds: float,
                        **_) -> bool | str:
        try:
            plan(storyboard, global_prompt, seconds, fps, chunk_seconds)
        except StoryboardError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, clip, storyboard: str, global_prompt: str, negative_prompt: str, seconds: float, fps: float,
                chunk_seconds: float) -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip: no text encoder connected; load one (Load CLIP, type wan) or PFP Tiny Text Encoder")
        chunks = plan(storyboard, global_prompt, seconds, fps, chunk_seconds)
        conditioning = {prompt: encode(clip, prompt) for prompt in {c.prompt for c in chunks}}
        result = StoryboardPlan(chunks, conditioning, encode(clip, negative_prompt), seconds, fps, chunk_seconds)
        text = format_plan(chunks)
        return io.NodeOutput(result, text, ui={"text": [text]})
