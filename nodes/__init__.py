"""ComfyUI adapters (V3 nodes). The only package of the pack that imports comfy."""
from __future__ import annotations

from pathlib import Path

import folder_paths
from comfy_api.latest import ComfyExtension, io

from .loader_nodes import LoadMemoryEncoder, LoadTinyTextEncoder, LoadTinyVAE, ProceduralImage
from .memory_io_nodes import LoadMemory, SaveMemory
from .memory_nodes import ApplyMemory, CompressHistory, RetrieveFrame
from .plan_node import Plan
from .prompt_context import register_prompt_handler
from .routes import register_routes
from .sampler_node import AutoregressiveSampler
from .video_frames_node import VideoFrames
from .storyboard_node import StoryboardPrompt

BUNDLED = Path(__file__).resolve().parents[1] / "pfp_core" / "weights"


def register_model_folders() -> None:
    """models/pfp_encoders (also settable in extra_model_paths.yaml) plus the bundled tiny weights."""
    if "pfp_encoders" not in folder_paths.folder_names_and_paths:
        default = str(Path(folder_paths.models_dir) / "pfp_encoders")
        folder_paths.folder_names_and_paths["pfp_encoders"] = ([default], folder_paths.supported_pt_extensions)
    folder_paths.add_model_folder_path("pfp_encoders", str(BUNDLED / "encoders"))
    folder_paths.add_model_folder_path("diffusion_models", str(BUNDLED / "diffusion_models"))


class PFPExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return [LoadMemoryEncoder, LoadTinyVAE, LoadTinyTextEncoder, ProceduralImage, StoryboardPrompt, CompressHistory,
                ApplyMemory, RetrieveFrame, SaveMemory, LoadMemory, Plan, AutoregressiveSampler, VideoFrames]


async def comfy_entrypoint() -> PFPExtension:
    register_model_folders()
    register_routes()  # POST /pfp/storyboard/plan for the web timeline
    register_prompt_handler()  # the Storyboard node's validation reads the prompt
    return PFPExtension()
