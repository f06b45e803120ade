"""Save a PFP_MEMORY to output/pfp_memory and load it back, so one compressed history serves many runs."""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import io

from ..pfp_core.inputs import inside
from ..pfp_core.model.memory import Memory, load_memory, save_memory
from .types import MemoryType


def memory_folder() -> Path:
    return Path(folder_paths.get_output_directory()) / "pfp_memory"


class SaveMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PFPSaveMemory", display_name="PFP Save Memory", category="PFP", is_output_node=True,
                         inputs=[MemoryType.Input("memory"), io.String.Input("name", default="history")],
                         outputs=[])

    @classmethod
    def execute(cls, memory: Memory, name: str) -> io.NodeOutput:
        path = save_memory(memory, inside(memory_folder(), f"{name}.safetensors", "name"))
        return io.NodeOutput(ui={"text": [f"saved {memory.token_count} tokens to output/pfp_memory/{path.name}"]})


class LoadMemory(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        files = sorted(p.name for p in memory_folder().glob("*.safetensors")) if memory_folder().is_dir() else []
        return io.Schema(node_id="PFPLoadMemory", display_name="PFP Load Memory", category="PFP",
                         inputs=[io.Combo.Input("memory_file", options=files)],
                         outputs=[MemoryType.Output(display_name="memory")])

    @classmethod
    def execute(cls, memory_file: str) -> io.NodeOutput:
        memory = load_memory(inside(memory_folder(), memory_file, "memory_file"))
        return io.NodeOutput(memory, ui={"text": [f"{memory.token_count} tokens, {memory.seconds:.2f} s"]})
