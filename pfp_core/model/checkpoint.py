"""Checkpoints: safetensors only, with the model config as JSON in the metadata. Nothing is unpickled.

A DiT file from the original Wan release has no PFP metadata: its config is inferred from tensor shapes, as
ComfyUI does, so Wan checkpoints load here and what we save loads in ComfyUI.

Before anything is allocated, a config (from metadata or inferred) is checked against pfp_core.limits and for
consistency (whole numbers, heads that divide the width), the model is built on the meta device and its shapes are
compared with the file's, and weights must be floating point: a file cannot make the loader allocate more than
the file holds.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import torch

from .. import limits
from ..atomic import save_tensors
from ..config import DiTConfig, EncoderConfig, known_dit_config
from ..tensor_files import CheckpointError, meta_shapes, read_safetensors, read_shards, tensor_values
from .dit import WanDiT
from .encoder import MemoryEncoder

COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
WEIGHT_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float64)
LAYER_FIELDS = ("num_layers", "hr_blocks", "attn_layers")  # may be 0 and at most limits.MAX_LAYERS
HEAD_FIELDS = {"num_heads": "dim", "attn_heads": "width"}  # heads -> the width they split
REEXPORT = "re-export it with `python -m pfp_core pretrain/finetune`"


def save_model(module: torch.nn.Module | dict[str, torch.Tensor], config: DiTConfig | EncoderConfig, path: str | Path,
               kind: str, extra: dict[str, str] | None = None) -> Path:
    """Atomic write: a crash leaves the previous file intact. `module`: the model, or its (gathered) state dict."""
    metadata = {"pfp_kind": kind, "config": config.to_json(), **(extra or {})}
    return save_tensors(module.state_dict() if isinstance(module, torch.nn.Module) else module, path, metadata)


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in COMFY_PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def infer_dit_config(state_dict: dict[str, torch.Tensor], name: str = "custom", field: str = "dit") -> DiTConfig:
    """Wan's shapes -> config, with ComfyUI's assumptions (heads = dim / 128, freq 256). A known size (Wan 2.1
    1.3B, ...) comes back as its named config, which also carries its fps and text length."""
    try:
        dim = state_dict["head.modulation"].shape[-1]
        in_dim = state_dict["patch_embedding.weight"].shape[1]
        layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        check_config(DiTConfig(name, dim, 1, 1, layers), field, name)  # before any per-layer work
        inferred = DiTConfig(name=name, dim=dim, ffn_dim=state_dict["blocks.0.ffn.0.weight"].shape[0],
                         num_heads=max(1, dim // 128), num_layers=layers, in_dim=in_dim,
                         out_dim=state_dict["head.head.weight"].shape[0] // 4,
                         text_dim=state_dict["text_embedding.0.weight"].shape[1],
                         model_type="i2v" if "img_emb.proj.0.weight" in state_dict else "t2v",
                         vae="wan2.2" if in_dim == 48 else "wan2.1")
    except CheckpointError:  # the size check above: its own message
        raise
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"{field}: {name} is not a Wan DiT (missing {error}); load a Wan 2.1/2.2 diffusion model "
                              "in the original or ComfyUI layout (not diffusers)") from None
    return known_dit_config(inferred) or check_config(inferred, field, name)


def check_config(config: DiTConfig | EncoderConfig, field: str, name: str):
    """`config` if every field has its declared type, whole numbers lie in 1..limits.MAX_WIDTH (layer counts in
    0..MAX_LAYERS), heads divide their width into an even head size and a rate compresses at most MAX_RATE per
    axis; else a CheckpointError naming the value."""
    for item in dataclasses.fields(config):
        problem = _field_problem(item.name, getattr(config, item.name), typing.get_type_hints(type(config))[item.name])
        if problem:
            raise CheckpointError(f"{field}: {name} has impossible config metadata ({item.name} {problem}); {REEXPORT}")
    for heads, width in HEAD_FIELDS.items():
        count, size = getattr(config, heads, 1), getattr(config, width, 2)
        if hasattr(config, heads) and (size % count or size // count % 2):
            raise CheckpointError(f"{field}: {name} has impossible config metadata ({width} {size} does not split into "
                                  f"{count} heads of an even size); {REEXPORT}")
    if isinstance(config, EncoderConfig) and max(dataclasses.astuple(config.parsed_rate)) > limits.MAX_RATE:
        raise CheckpointError(f"{field}: {name} has impossible config metadata (rate {config.rate} compresses more than "
                              f"{limits.MAX_RATE}x on an axis); {REEXPORT}")
    return config


def _field_problem(name: str, value: object, kind: object) -> str | None:
    """Why `value` cannot be the config field `name` of type `kind`, or None."""
    if kind is int:
        low, high = (0, limits.MAX_LAYERS) if name in LAYER_FIELDS else (1, limits.MAX_WIDTH)
        low, high = (0, limits.MAX_RECENT_FRAMES) if name == "recent_frames" else (low, high)
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            return f"is {value!r}; expected a whole number from {low} to {high}"
    elif kind is float and (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)):
        return f"is {value!r}; expected a finite number"
    elif kind is str and not isinstance(value, str):
        return f"is {value!r}; expected text"
    elif typing.get_origin(kind) is tuple and not (isinstance(value, tuple) and all(
            isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= limits.MAX_WIDTH for v in value)):
        return f"is {value!r}; expected positive whole numbers"
    return None


def dit_config_of(tensors: dict[str, torch.Tensor], metadata: dict[str, str], path: Path, field: str) -> DiTConfig:
    """The config saved in our metadata, else inferred from Wan's shapes (prefix already stripped)."""
    if "config" in metadata:
        return _read_config(metadata, DiTConfig, field, path)
    return infer_dit_config(tensors, path.stem, field)


def _refuse_dtypes(tensors: dict[str, torch.Tensor], path: Path, field: str) -> None:
    """Weights must be bf16, fp16, fp32 or fp64: fp8 loses precision, integers and bools are not weights."""
    if "scaled_fp8" in tensors or any(t.dtype in (torch.float8_e4m3fn, torch.float8_e5m2) for t in tensors.values()):
        raise CheckpointError(f"{field}: {path.name} holds fp8 weights (an inference format that loses precision); "
                              "use the bf16, fp16 or fp32 release of the same model")
    name = next((name for name, tensor in tensors.items() if tensor.dtype not in WEIGHT_DTYPES), None)
    if name is not None:
        raise CheckpointError(f"{field}: {path.name} holds {str(tensors[name].dtype).removeprefix('torch.')} tensor "
                              f"{name}, not floating-point weights; re-export it in bf16, fp16 or fp32")


def read_dit_config(path: str | Path, field: str = "dit") -> DiTConfig:
    """The DiT config of a file (or folder of shards) from its header alone: cheap even for 14B."""
    shapes, metadata = read_shards(Path(path), field, meta_shapes)
    shapes = strip_prefix(shapes)
    _refuse_dtypes(shapes, Path(path), field)
    return dit_config_of(shapes, metadata, Path(path), field)


def _check_shapes(module: torch.nn.Module, tensors: dict[str, torch.Tensor], field: str, path: Path) -> None:
    """Compare a module built on the meta device with the file's shapes, before any memory is allocated for it."""
    for name, expected in module.state_dict().items():
        if name in tensors and tensors[name].shape != expected.shape:
            raise CheckpointError(f"{field}: {path.name} does not match its config (size mismatch for {name}: the file "
                                  f"holds {list(tensors[name].shape)}, the config needs {list(expected.shape)}); "
                                  f"{REEXPORT}")


def _build(make: Callable[[], torch.nn.Module], tensors: dict[str, torch.Tensor], field: str, path: Path):
    """make() on the meta device, checked against the file's tensors, then allocated and loaded on the CPU."""
    with torch.device("meta"):
        module = make()
    _check_shapes(module, tensors, field, path)
    module = module.to_empty(device="cpu")
    _load_into(module, tensors, field, path)
    return module.eval()


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], field: str, path: Path) -> None:
    missing, unexpected = module.load_state_dict(tensors, strict=False)
    if missing or unexpected:
        raise CheckpointError(f"{field}: {path.name} does not match its config (missing {len(missing)} tensors "
                              f"e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]}); {REEXPORT}")


def _read_config(metadata: dict[str, str], config_class: type, field: str, path: Path):
    try:
        limits.parse_json(metadata["config"], "config")  # depth and size first: from_json would recurse
        config = config_class.from_json(metadata["config"])
    except (TypeError, ValueError, KeyError, AttributeError) as error:
        raise CheckpointError(f"{field}: {path.name} has unreadable config metadata ({error}); {REEXPORT}") from None
    return check_config(config, field, path.name)


def load_encoder(path: str | Path, ops: ModuleType = torch.nn) -> MemoryEncoder:
    """`ops`: torch.nn, or comfy.ops inside ComfyUI so model management can cast and offload the layers."""
    tensors, metadata = read_safetensors(path, "encoder")
    if metadata.get("pfp_kind") != "memory_encoder" or "config" not in metadata:
        raise CheckpointError(f"encoder: {Path(path).name} is not a PFP memory encoder (no pfp_kind=memory_encoder "
                              "metadata); pick a file saved by `python -m pfp_core pretrain/finetune`")
    _refuse_dtypes(tensors, Path(path), "encoder")
    config = _read_config(metadata, EncoderConfig, "encoder", Path(path))
    return _build(lambda: MemoryEncoder(config, ops), tensors, "encoder", Path(path))


def load_dit(path: str | Path, field: str = "dit") -> WanDiT:
    """A Wan DiT in fp32 from our files, the original Wan release (one file or a folder of shards) or ComfyUI's
    repackaged files (`model.diffusion_model.` prefix). `field` names the flag in errors."""
    path = Path(path)
    tensors, metadata = read_shards(path, field, tensor_values)
    tensors = strip_prefix(tensors)
    if metadata.get("pfp_kind", "dit") != "dit":
        raise CheckpointError(f"{field}: {path.name} is a PFP {metadata['pfp_kind'].replace('_', ' ')}, not a DiT; "
                              "pass it with the matching option (e.g. --encoder) and pick a DiT file here")
    _refuse_dtypes(tensors, path, field)
    config = dit_config_of(tensors, metadata, path, field)
    return _build(lambda: WanDiT(config), tensors, field, path)


def check_compatible(encoder: EncoderConfig, dit: DiTConfig) -> None:
    """The encoder writes straight into the DiT's width and reads the DiT's latents: both must agree."""
    problems = []
    if encoder.dim != dit.dim:
        problems.append(f"encoder width {encoder.dim} != DiT width {dit.dim}")
    if encoder.in_channels != dit.in_dim:
        problems.append(f"encoder latent channels {encoder.in_channels} != DiT latent channels {dit.in_dim}")
    if tuple(encoder.patch_size) != tuple(dit.patch_size):
        problems.append(f"encoder patch {tuple(encoder.patch_size)} != DiT patch {tuple(dit.patch_size)}")
    if problems:
        raise CheckpointError(f"encoder: does not fit this DiT ({'; '.join(problems)}); use an encoder trained "
                              f"for {dit.name} (base_model={encoder.base_model} here)")
