"""Plan: tokens, FLOPs and memory for a long video before sampling, from pfp_core's planner."""
from __future__ import annotations

from comfy_api.latest import io

from ..pfp_core.config import DIT_CONFIGS
from ..pfp_core.planner import format_plan_table, plan


class Plan(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPPlan", display_name="PFP Plan", category="PFP", is_output_node=True,
            description="Memory tokens, attention savings, estimated VRAM per chunk and RAM for the whole video.",
            inputs=[io.Combo.Input("model", options=[n for n in DIT_CONFIGS if n != "tiny"] + ["tiny"]),
                    io.Int.Input("width", default=832, min=16, max=8192, step=16),
                    io.Int.Input("height", default=480, min=16, max=8192, step=16),
                    io.Float.Input("fps", default=16.0, min=1.0, max=120.0),
                    io.Float.Input("video_seconds", default=60.0, min=0.5, max=3600.0),
                    io.Float.Input("history_seconds", default=20.0, min=0.5, max=600.0),
                    io.Float.Input("chunk_seconds", default=5.0, min=0.1, max=60.0),
                    io.String.Input("rate", default="4x4x2")],
            outputs=[io.String.Output(display_name="plan")])

    @classmethod
    def execute(cls, model: str, width: int, height: int, fps: float, video_seconds: float, history_seconds: float,
                chunk_seconds: float, rate: str) -> io.NodeOutput:
        figures = plan(model, width, height, fps, history_seconds, rate, chunk_seconds, video_seconds=video_seconds)
        text = format_plan_table(figures)
        return io.NodeOutput(text, ui={"text": [text]})
