"""Reading safetensors files without trusting them: pickles and zip archives are refused before any parser
touches them, FIFOs and oversized files by pfp_core.limits, and NaN weights on read. Checkpoints, memories, LoRA
adapters and text embeddings all come in through here (pfp_core.atomic writes them).
"""
from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from . import limits

_DTYPES = {"F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2, "BF16": torch.bfloat16,
           "F16": torch.float16, "F32": torch.float32, "F64": torch.float64, "BOOL": torch.bool, "U8": torch.uint8,
           "I8": torch.int8, "I16": torch.int16, "I32": torch.int32, "I64": torch.int64}
MAX_MODEL_BYTES = 2**40  # a file (or shard) larger than 1 TiB is not a model this pack can run


class CheckpointError(ValueError):
    """A one-line, user-facing reason a file cannot be used."""


def _sniff(path: Path, field: str) -> None:
    """Refuse pickles and zip archives before any parser touches them. A safetensors file starts with its JSON
    header's length (u64, little-endian) and then '{'; a length whose low byte is 0x80 looks like a pickle's
    first byte, so the header is checked first."""
    if not os.path.lexists(path):
        raise CheckpointError(f"{field}: file not found: {path}; check the path")
    try:  # a FIFO would block the reader forever
        limits.regular_file(path, field, MAX_MODEL_BYTES, "pick a .safetensors file")
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    with path.open("rb") as f:
        head = f.read(9)
    looks_safetensors = len(head) == 9 and head[8:9] == b"{"
    if looks_safetensors and 8 + int.from_bytes(head[:8], "little") <= path.stat().st_size:
        return
    if not looks_safetensors and (head[:1] == b"\x80" or head[:2] == b"PK"):  # a cut safetensors is no pickle
        raise CheckpointError(f"{field}: {path.name} is a pickle/torch.save file, not safetensors; "
                              "only .safetensors files are loaded (pickles can run code)")
    if len(head) < 9:
        raise CheckpointError(f"{field}: {path.name} is empty or truncated; re-download or re-export it")


TensorReader = Callable[[Any, str], torch.Tensor]  # (open safetensors file, tensor name) -> tensor


def _read_file(path: Path, field: str, read: TensorReader) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    _sniff(path, field)
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors, metadata = {name: read(f, name) for name in f.keys()}, f.metadata() or {}
    except Exception as error:  # safetensors raises several types for a bad header or short file
        raise CheckpointError(f"{field}: {path.name} is not a readable safetensors file ({error}); "
                              "re-export it with `python -m pfp_core` or pick another file") from None
    if read is tensor_values:  # shape-only reads hold no values to check
        _check_finite(tensors, field, path)
    return tensors, metadata


def tensor_values(f: Any, name: str) -> torch.Tensor:
    """A TensorReader of the values."""
    return f.get_tensor(name)


def meta_shapes(f: Any, name: str) -> torch.Tensor:
    """A TensorReader of the shapes alone (meta tensors): a 14B header is read without its weights."""
    piece = f.get_slice(name)
    return torch.empty(piece.get_shape(), dtype=_DTYPES.get(piece.get_dtype(), torch.float32), device="meta")


def read_safetensors(path: str | Path, field: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    return _read_file(Path(path), field, tensor_values)


def read_shards(path: Path, field: str, read: TensorReader) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A file, or a folder of shards (the original Wan 14B and 2.2 5B releases split the DiT in several files)."""
    files = sorted(path.glob("*.safetensors")) if path.is_dir() else [path]
    if not files:
        raise CheckpointError(f"{field}: folder {path} holds no .safetensors file; point at the diffusion model file")
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for file in files:
        part, part_metadata = _read_file(file, field, read)
        tensors.update(part)
        metadata = metadata or part_metadata
    return tensors, metadata


def _check_finite(tensors: dict[str, torch.Tensor], field: str, path: Path) -> None:
    """NaN weights (a diverged training, a damaged file) would only show up as black frames much later."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{field}: {path.name} holds NaN or infinite values (tensor {name}); the file is "
                                  "damaged or its training diverged; use another checkpoint")
