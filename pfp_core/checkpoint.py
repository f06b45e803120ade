"""Checkpoints: safetensors only, with the model config as JSON in the metadata. Nothing is unpickled.

A DiT file from the original Wan release has no PFP metadata: its config is inferred from tensor shapes, as
ComfyUI does, so Wan checkpoints load here and what we save loads in ComfyUI.
"""
from __future__ import annotations

from pathlib import Path
from types import ModuleType

import torch
from safetensors import safe_open

from .atomic import save_tensors
from .config import DiTConfig, EncoderConfig
from .dit import WanDiT
from .encoder import MemoryEncoder

COMFY_PREFIXES = ("model.diffusion_model.", "diffusion_model.")
REEXPORT = "re-export it with `python -m pfp_core pretrain/finetune`"


class CheckpointError(ValueError):
    """A one-line, user-facing reason a file cannot be used."""


def save_model(module: torch.nn.Module, config: DiTConfig | EncoderConfig, path: str | Path, kind: str,
               extra: dict[str, str] | None = None) -> Path:
    """Atomic write: a crash leaves the previous file intact."""
    metadata = {"pfp_kind": kind, "config": config.to_json(), **(extra or {})}
    return save_tensors(module.state_dict(), path, metadata)


def _sniff(path: Path, field: str) -> None:
    """Refuse pickles and zip archives before any parser touches them."""
    if not path.is_file():
        raise CheckpointError(f"{field}: file not found: {path}; check the path")
    with path.open("rb") as f:
        head = f.read(8)
    if head[:1] == b"\x80" or head[:2] == b"PK":
        raise CheckpointError(f"{field}: {path.name} is a pickle/torch.save file, not safetensors; "
                              "only .safetensors files are loaded (pickles can run code)")
    if len(head) < 8:
        raise CheckpointError(f"{field}: {path.name} is empty or truncated; re-download or re-export it")


def read_safetensors(path: str | Path, field: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    path = Path(path)
    _sniff(path, field)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}
    except Exception as error:  # safetensors raises several types for a bad header or short file
        raise CheckpointError(f"{field}: {path.name} is not a readable safetensors file ({error}); "
                              "re-export it with `python -m pfp_core` or pick another file") from None
    _check_finite(tensors, field, path)
    return tensors, metadata


def _check_finite(tensors: dict[str, torch.Tensor], field: str, path: Path) -> None:
    """NaN weights (a diverged training, a damaged file) would only show up as black frames much later."""
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{field}: {path.name} holds NaN or infinite values (tensor {name}); the file is "
                                  "damaged or its training diverged; use another checkpoint")


def strip_prefix(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    for prefix in COMFY_PREFIXES:
        if any(k.startswith(prefix) for k in state_dict):
            return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
    return state_dict


def infer_dit_config(state_dict: dict[str, torch.Tensor], name: str = "custom") -> DiTConfig:
    """Wan's shapes -> config, with ComfyUI's assumptions (heads = dim / 128, freq 256)."""
    try:
        dim = state_dict["head.modulation"].shape[-1]
        in_dim = state_dict["patch_embedding.weight"].shape[1]
        layers = 1 + max(int(k.split(".")[1]) for k in state_dict if k.startswith("blocks."))
        return DiTConfig(name=name, dim=dim, ffn_dim=state_dict["blocks.0.ffn.0.weight"].shape[0],
                         num_heads=max(1, dim // 128), num_layers=layers, in_dim=in_dim,
                         out_dim=state_dict["head.head.weight"].shape[0] // 4,
                         text_dim=state_dict["text_embedding.0.weight"].shape[1],
                         model_type="i2v" if "img_emb.proj.0.weight" in state_dict else "t2v",
                         vae="wan2.2" if in_dim == 48 else "wan2.1")
    except (KeyError, ValueError) as error:
        raise CheckpointError(f"dit: not a Wan DiT state dict (missing {error}); load a Wan 2.1/2.2 diffusion model") from None


def _load_into(module: torch.nn.Module, tensors: dict[str, torch.Tensor], field: str, path: Path) -> None:
    try:
        missing, unexpected = module.load_state_dict(tensors, strict=False)
    except RuntimeError as error:  # shape mismatches
        first = next(line.strip() for line in str(error).splitlines() if "size mismatch" in line)
        raise CheckpointError(f"{field}: {path.name} does not match its config ({first.rstrip('.')}); "
                              f"{REEXPORT}") from None
    if missing or unexpected:
        raise CheckpointError(f"{field}: {path.name} does not match its config (missing {len(missing)} tensors "
                              f"e.g. {missing[:2]}, unexpected {len(unexpected)} e.g. {unexpected[:2]}); {REEXPORT}")


def _read_config(metadata: dict[str, str], config_class: type, field: str, path: Path):
    try:
        return config_class.from_json(metadata["config"])
    except (TypeError, ValueError, KeyError) as error:
        raise CheckpointError(f"{field}: {path.name} has unreadable config metadata ({error}); {REEXPORT}") from None


def load_encoder(path: str | Path, ops: ModuleType = torch.nn) -> MemoryEncoder:
    """`ops`: torch.nn, or comfy.ops inside ComfyUI so model management can cast and offload the layers."""
    tensors, metadata = read_safetensors(path, "encoder")
    if metadata.get("pfp_kind") != "memory_encoder" or "config" not in metadata:
        raise CheckpointError(f"encoder: {Path(path).name} is not a PFP memory encoder (no pfp_kind=memory_encoder "
                              "metadata); pick a file saved by `python -m pfp_core pretrain/finetune`")
    config = _read_config(metadata, EncoderConfig, "encoder", Path(path))
    encoder = MemoryEncoder(config, ops)
    _load_into(encoder, tensors, "encoder", Path(path))
    return encoder.eval()


def load_dit(path: str | Path) -> WanDiT:
    tensors, metadata = read_safetensors(path, "dit")
    tensors = strip_prefix(tensors)
    if metadata.get("pfp_kind", "dit") != "dit":
        raise CheckpointError(f"dit: {Path(path).name} is a PFP {metadata['pfp_kind'].replace('_', ' ')}, not a DiT; "
                              "pass it with the matching option (e.g. --encoder) and pick a DiT file here")
    if "config" in metadata:
        config = _read_config(metadata, DiTConfig, "dit", Path(path))
    else:
        config = infer_dit_config(tensors, name=Path(path).stem)
    with torch.device("meta"):
        dit = WanDiT(config)
    dit = dit.to_empty(device="cpu")
    _load_into(dit, tensors, "dit", Path(path))
    return dit.eval()


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
