"""Loaders: memory encoders from the `pfp_encoders` model folder, and the bundled tiny model's VAE and text
encoder (the tiny DiT itself loads with ComfyUI's stock Load Diffusion Model)."""
from __future__ import annotations

import torch
import folder_paths
from comfy_api.latest import io

from ..pfp_core.inputs import inside
from ..pfp_core.training.procedural import heldout_seed, make_video
from .adapters import EncoderHandle
from .tiny_models import TinyTextEncoder, TinyVAE
from .types import MemoryEncoderType

DTYPES = {"default": None, "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def encoder_path(name: str) -> str:
    """`name` as listed by the combo, found in one of the pfp_encoders folders and never outside them."""
    folders = folder_paths.get_folder_paths("pfp_encoders")
    for folder in folders:
        path = inside(folder, name, "encoder_name")
        if path.is_file():
            return str(path)
    raise ValueError(f"encoder_name: '{name}' is not in models/pfp_encoders (looked in {', '.join(folders)}); put "
                     "the file there or pick one from the list (press R to refresh it after adding one)")


class LoadMemoryEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="PFPLoadMemoryEncoder", display_name="PFP Load Memory Encoder", category="PFP",
            description="Loads a PFP memory encoder (.safetensors) from models/pfp_encoders.",
            inputs=[io.Combo.Input("encoder_name", options=folder_paths.get_filename_list("pfp_encoders")),
                    io.Combo.Input("dtype", options=list(DTYPES), default="default")],
            outputs=[MemoryEncoderType.Output(display_name="memory_encoder")])

    @classmethod
    def validate_inputs(cls, encoder_name: str) -> bool | str:
        """At /prompt, so a missing file is a 400 naming it rather than an error mid-run."""
        try:
            encoder_path(encoder_name)
        except ValueError as error:
            return str(error)
        return True

    @classmethod
    def execute(cls, encoder_name: str, dtype: str) -> io.NodeOutput:
        handle = EncoderHandle.load(encoder_path(encoder_name), DTYPES[dtype])
        c = handle.config
        info = f"base {c.base_model}, width {c.dim}, rate {c.rate}, {c.variant}, {c.fps} fps"
        if c.sampling_steps:  # what the pair was finetuned to sample with: the sampler's steps should match
            info += f", finetuned for {c.sampling_steps} sampling step{'s' * (c.sampling_steps > 1)} a chunk"
        return io.NodeOutput(handle, ui={"text": [info]})


class LoadTinyVAE(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PFPTinyVAE", display_name="PFP Tiny VAE", category="PFP/tiny",
                         description="The bundled tiny model's exactly invertible space-to-depth VAE (no file).",
                         outputs=[io.Vae.Output(display_name="vae")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(TinyVAE())


class LoadTinyTextEncoder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PFPTinyTextEncoder", display_name="PFP Tiny Text Encoder", category="PFP/tiny",
                         description="The bundled tiny model's word-hash text encoder (no file, no download).",
                         outputs=[io.Clip.Output(display_name="clip")])

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(TinyTextEncoder())


class ProceduralImage(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(node_id="PFPProceduralImage", display_name="PFP Procedural Start Image", category="PFP/tiny",
                         description="A start frame from the procedural videos the tiny model was trained on.",
                         inputs=[io.Int.Input("seed", default=7, min=0, max=2**31 - 1),
                                 io.Int.Input("size", default=32, min=16, max=256, step=16)],
                         outputs=[io.Image.Output(display_name="image")])

    @classmethod
    def execute(cls, seed: int, size: int) -> io.NodeOutput:
        frame = make_video(heldout_seed(seed), 1, size).frames
        return io.NodeOutput(torch.from_numpy(frame).float() / 255)
