"""LoRA on the DiT: a low-rank adapter beside every Linear of the transformer blocks; the base stays frozen.

The adapters live outside the DiT and reach it through forward hooks, so the DiT keeps Wan's parameter names
(what it saves still loads in ComfyUI). Linear W [out, in] becomes W + (alpha / rank) * up @ down, with
down [rank, in] and up [out, rank]; up starts at zero, so training starts from the base model exactly.

The file format is the one ComfyUI's LoraLoaderModelOnly reads (comfy/lora.py, model_lora_keys_unet maps
`diffusion_model.<module>` to the module's weight; comfy/weight_adapter/lora.py reads `lora_up`/`lora_down`
and scales by alpha / rank):
    diffusion_model.blocks.0.self_attn.q.lora_down.weight  [rank, in]
    diffusion_model.blocks.0.self_attn.q.lora_up.weight    [out, rank]
    diffusion_model.blocks.0.self_attn.q.alpha             scalar
"""
from __future__ import annotations

import math
from functools import partial
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..atomic import save_tensors
from ..tensor_files import CheckpointError, read_safetensors

PREFIX = "diffusion_model."
DOWN, UP, ALPHA = ".lora_down.weight", ".lora_up.weight", ".alpha"


class LoRA(nn.Module):
    """Adapters for the Linear modules `names` of a DiT, `shapes` their weights' [out, in]."""

    def __init__(self, names: list[str], shapes: list[tuple[int, int]], rank: int, alpha: float):
        super().__init__()
        if rank <= 0:
            raise ValueError(f"lora-rank: must be a positive whole number, got {rank}")
        self.names, self.rank, self.alpha = list(names), rank, float(alpha)
        self.down = nn.ParameterList(nn.Parameter(torch.empty(rank, n_in)) for _, n_in in shapes)
        self.up = nn.ParameterList(nn.Parameter(torch.zeros(n_out, rank)) for n_out, _ in shapes)
        for down in self.down:
            nn.init.kaiming_uniform_(down, a=math.sqrt(5))  # nn.Linear's own init, as in the LoRA paper's code

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def output_delta(self, index: int, x: torch.Tensor) -> torch.Tensor:
        return F.linear(F.linear(x, self.down[index]), self.up[index]) * self.scale

    def weight_delta(self, index: int) -> torch.Tensor:
        return self.scale * (self.up[index].float() @ self.down[index].float())


def target_linears(dit: nn.Module) -> dict[str, nn.Linear]:
    """Every Linear inside the blocks: self- and cross-attention q, k, v, o and both FFN layers."""
    return {name: m for name, m in dit.named_modules() if name.startswith("blocks.") and isinstance(m, nn.Linear)}


def lora_for(dit: nn.Module, rank: int, alpha: float) -> LoRA:
    targets = target_linears(dit)
    return LoRA(list(targets), [tuple(m.weight.shape) for m in targets.values()], rank, alpha)


def _add_delta(lora: LoRA, index: int, module: nn.Module, inputs: tuple, output: torch.Tensor) -> torch.Tensor:
    return output + lora.output_delta(index, inputs[0])


def attach(lora: LoRA, dit: nn.Module) -> None:
    """From now on each target Linear of `dit` adds its adapter's output to its own."""
    for index, name in enumerate(lora.names):
        dit.get_submodule(name).register_forward_hook(partial(_add_delta, lora, index))


def freeze_base(dit: nn.Module, bf16: bool) -> None:
    """The base is never updated, so it needs no fp32 master copy: under bf16 autocast its Linear and Conv
    weights are kept in bf16 (half the memory). Norms and modulation stay fp32: CPU layer_norm wants fp32."""
    dit.requires_grad_(False)
    if bf16:
        for module in dit.modules():
            if isinstance(module, (nn.Linear, nn.Conv3d)):
                module.to(torch.bfloat16)


@torch.no_grad()
def merge_into(dit: nn.Module, lora: LoRA) -> None:
    """W += scale * up @ down, computed in fp32: the DiT then runs without the adapter."""
    for index, name in enumerate(lora.names):
        weight = dit.get_submodule(name).weight
        weight.copy_((weight.float() + lora.weight_delta(index).to(weight.device)).to(weight.dtype))


def lora_tensors(lora: LoRA, dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """ComfyUI's key names (see the module docstring)."""
    tensors: dict[str, torch.Tensor] = {}
    for name, down, up in zip(lora.names, lora.down, lora.up):
        key = PREFIX + name
        tensors[key + DOWN] = down.detach().to(dtype)
        tensors[key + UP] = up.detach().to(dtype)
        tensors[key + ALPHA] = torch.tensor(lora.alpha)
    return tensors


def save_lora(lora: LoRA, path: str | Path, metadata: dict[str, str], dtype: torch.dtype = torch.float32) -> Path:
    meta = {"pfp_kind": "lora", "rank": str(lora.rank), "alpha": str(lora.alpha), **metadata}
    return save_tensors(lora_tensors(lora, dtype), path, meta)


def read_lora(path: str | Path, field: str = "lora") -> tuple[LoRA, dict[str, str]]:
    """A LoRA saved by `save_lora` (or any file with the same keys), and the file's metadata."""
    tensors, metadata = read_safetensors(path, field)
    names = [key[len(PREFIX):-len(DOWN)] for key in tensors if key.startswith(PREFIX) and key.endswith(DOWN)]
    if not names:
        raise CheckpointError(f"{field}: {Path(path).name} has no '{PREFIX}<module>{DOWN}' tensors; "
                              "it is not a LoRA saved by `python -m pfp_core pretrain/finetune --lora-rank`")
    try:
        ups = [tensors[PREFIX + name + UP] for name in names]
        downs = [tensors[PREFIX + name + DOWN] for name in names]
        alpha = float(tensors[PREFIX + names[0] + ALPHA])
    except KeyError as error:
        raise CheckpointError(f"{field}: {Path(path).name} lacks {error}; re-export the LoRA") from None
    lora = LoRA(names, [(up.shape[0], down.shape[1]) for up, down in zip(ups, downs)], downs[0].shape[0], alpha)
    with torch.no_grad():
        for index, (up, down) in enumerate(zip(ups, downs)):
            lora.up[index].copy_(up)
            lora.down[index].copy_(down)
    return lora, metadata


def load_lora_into(lora: LoRA, path: str | Path, field: str) -> dict[str, str]:
    """Copy a saved adapter into `lora` (resume, or continue a pretraining adapter), module by module name; rank,
    alpha and the adapted modules must agree."""
    saved, metadata = read_lora(path, field)
    if (saved.rank, saved.alpha) != (lora.rank, lora.alpha):
        raise CheckpointError(f"{field}: {Path(path).name} holds a LoRA of rank {saved.rank}, alpha {saved.alpha:g}; "
                              f"pass --lora-rank {saved.rank} --lora-alpha {saved.alpha:g} to continue it")
    shapes = lambda adapter: {name: (tuple(down.shape), tuple(up.shape))
                              for name, down, up in zip(adapter.names, adapter.down, adapter.up)}
    if shapes(saved) != shapes(lora):
        raise CheckpointError(f"{field}: {Path(path).name} adapts a DiT of another size or layout than this one; "
                              "train on the base it was made for")
    index = {name: i for i, name in enumerate(saved.names)}  # the file lists modules in another order
    with torch.no_grad():
        for i, name in enumerate(lora.names):
            lora.down[i].copy_(saved.down[index[name]])
            lora.up[i].copy_(saved.up[index[name]])
    return metadata
