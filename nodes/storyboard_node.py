"""Storyboard Prompt: timestamped prompts -> per-chunk conditioning and a readable plan."""
from __future__ import annotations

from dataclasses import dataclass

from comfy_api.latest import io

from ..pfp_core.generation.plan_request import is_number, plan
from ..pfp_core.generation.storyboard import ChunkPrompt, StoryboardError, check_text, format_plan
from .prompt_context import node_inputs
from .types import StoryboardType


@dataclass
class StoryboardPlan:
    chunks: list[ChunkPrompt]
    conditioning: dict[str, list]  # prompt -> CONDITIONING
    negative: list
    negative_prompt: str
    seconds: float
    fps: float
    chunk_seconds: float


TEXT_INPUTS, NUMBER_INPUTS = ("storyboard", "global_prompt"), ("seconds", "fps", "chunk_seconds")
PLAN_INPUTS = TEXT_INPUTS + NUMBER_INPUTS


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
            outputs=[StoryboardType.Output(display_name="storyboard"), io.String.Output(display_name="plan")],
            hidden=[io.Hidden.unique_id])

    @classmethod
    def validate_inputs(cls, storyboard: str | None) -> bool | str:
        """Checked at /prompt and reported once, on the storyboard input (see prompt_context). A linked value is
        unknown until the run, when execute checks it; ComfyUI checks the numbers' types and ranges itself."""
        values = {**node_inputs(cls.hidden.unique_id), "storyboard": storyboard}
        try:
            if not isinstance(values.get("negative_prompt"), list):
                check_text("negative prompt", values.get("negative_prompt", ""))
            if all(isinstance(values.get(name), str) for name in TEXT_INPUTS) and \
                    all(is_number(values.get(name)) for name in NUMBER_INPUTS):
                plan(*(values[name] for name in PLAN_INPUTS))
        except StoryboardError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, clip, storyboard: str, global_prompt: str, negative_prompt: str, seconds: float, fps: float,
                chunk_seconds: float) -> io.NodeOutput:
        if clip is None:
            raise ValueError("clip: no text encoder connected; load one (Load CLIP, type wan) or PFP Tiny Text Encoder")
        check_text("negative prompt", negative_prompt)
        chunks = plan(storyboard, global_prompt, seconds, fps, chunk_seconds)
        conditioning = {prompt: encode(clip, prompt) for prompt in {c.prompt for c in chunks}}
        result = StoryboardPlan(chunks, conditioning, encode(clip, negative_prompt), negative_prompt, seconds, fps,
                                chunk_seconds)
        text = format_plan(chunks)
        return io.NodeOutput(result, text, ui={"text": [text]})
