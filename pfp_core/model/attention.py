"""The one switch point for attention kernels.

Tensors follow ComfyUI's convention, [batch, tokens, heads * head_dim], so ComfyUI's optimized_attention can be
plugged in unchanged when the engine runs inside ComfyUI.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F

AttentionFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]


def sdpa_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    b, lq, inner = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, inner // heads).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, lq, inner)


def matmul_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """softmax(QK^T / sqrt(d)) V as plain matmuls: an L^2 matrix, so for measuring only. FlopCounterMode counts
    these products; it does not see inside the CPU flash-attention kernel behind SDPA."""
    b, lq, inner = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, inner // heads).transpose(1, 2)
    q, k, v = split(q), split(k), split(v)
    weights = torch.softmax(q @ k.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (weights @ v).transpose(1, 2).reshape(b, lq, inner)


def xformers_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    import xformers.ops  # optional dependency: only reached when available on CUDA

    b, lq, inner = q.shape
    split = lambda x: x.view(b, x.shape[1], heads, inner // heads)
    return xformers.ops.memory_efficient_attention(split(q), split(k), split(v)).reshape(b, lq, inner)


def _xformers_usable() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import xformers.ops  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS: dict[str, AttentionFn] = {"sdpa": sdpa_attention, "xformers": xformers_attention, "matmul": matmul_attention}
_active: AttentionFn | None = None


def default_backend() -> str:
    return "xformers" if _xformers_usable() else "sdpa"


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    """Multi-head attention through the active backend."""
    fn = _active or BACKENDS[default_backend()]
    return fn(q, k, v, heads)


@contextlib.contextmanager
def use_attention(backend: str | AttentionFn) -> Iterator[None]:
    """Route attention through `backend` (a name in BACKENDS or a function) inside the block."""
    global _active
    fn = BACKENDS[backend] if isinstance(backend, str) else backend
    previous, _active = _active, fn
    try:
        yield
    finally:
        _active = previous
