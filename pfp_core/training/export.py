"""Export a training folder for ComfyUI's stock loaders.

- The DiT, with the run's LoRA merged in if it trained one, as one safetensors file with Wan's parameter names:
  ComfyUI's "Load Diffusion Model" (UNETLoader) detects it as a Wan model.
- Or the LoRA alone (`--lora`), in the key format ComfyUI's LoraLoaderModelOnly reads (pfp_core.training.lora), to put
  on the unchanged base model.
The memory encoder needs no export: copy the folder's encoder.safetensors to models/pfp_encoders.
"""
from __future__ import annotations

from pathlib import Path

import torch

from ..model.checkpoint import load_dit, read_safetensors, save_model
from ..model.dit import WanDiT
from .lora import merge_into, read_lora, save_lora

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def folder_files(folder: Path, field: str) -> tuple[Path, Path | None]:
    """(base DiT file, LoRA file or None) of a training folder: a LoRA run names its base file in the metadata."""
    lora = folder / "lora.safetensors"
    if not lora.exists():
        return folder / "dit.safetensors", None
    _, metadata = read_safetensors(lora, field)
    if "base" not in metadata:
        raise ValueError(f"{field}: {lora} does not name its base DiT; it was not saved by pfp_core training")
    return Path(metadata["base"]), lora


def merged_dit(folder: Path, field: str) -> WanDiT:
    """The DiT a training folder trained: its own file, or the base a LoRA run names with the adapter merged in."""
    base, lora = folder_files(folder, field)
    dit = load_dit(base, field)
    if lora is not None:
        merge_into(dit, read_lora(lora, field)[0])
    return dit


def export_dit(folder: Path, out: Path, dtype: torch.dtype) -> Path:
    dit = merged_dit(folder, "from")
    return save_model(dit.to(dtype), dit.config, out, "dit", {"exported_from": str(folder)})


def export_lora(folder: Path, out: Path, dtype: torch.dtype) -> Path:
    base, lora = folder_files(folder, "from")
    if lora is None:
        raise ValueError(f"from: {folder} holds no lora.safetensors (trained without --lora-rank); "
                         "export the whole DiT without --lora")
    adapter, _ = read_lora(lora, "from")
    return save_lora(adapter, out, {"base": str(base)}, dtype)
