"""Runs ComfyUI's native WanModel through pfp_core's forward, so memory injection has one implementation.

A DIFFUSION_MODEL wrapper on the ModelPatcher replaces WanModel._forward with pfp_core.model.dit.wan_forward over the
same modules (comfy.ops layers keep fp8 casting and partial loading), with attention routed to ComfyUI's
optimized_attention. Without a memory in the model options the wrapper steps aside.
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass, field, replace

import torch
import comfy.ldm.common_dit
import comfy.patcher_extension
from comfy.ldm.modules.attention import optimized_attention

from ..pfp_core.model.attention import use_attention
from ..pfp_core.model.dit import ContextCache, wan_forward
from ..pfp_core.model.memory import Memory

WRAPPER_KEY = "pfp_memory"


class RunCaches:
    """One ContextCache per sampling run: a run is known by its sigmas tensor (ComfyUI puts it in the
    transformer options), so a second KSampler on the same model, maybe with other weights patched in, starts
    afresh."""

    def __init__(self) -> None:
        self._sigmas: weakref.ref | None = None
        self._cache = ContextCache()

    def for_run(self, sigmas: torch.Tensor | None) -> ContextCache:
        if sigmas is None:
            return ContextCache()  # not inside a sampling run: nothing to share
        if self._sigmas is None or self._sigmas() is not sigmas:
            self._sigmas, self._cache = weakref.ref(sigmas), ContextCache()
        return self._cache


@dataclass
class MemoryInjection:
    memory: Memory
    first_frame_time: int  # time position of the sampled latents' first frame, after the history
    runs: RunCaches = field(default_factory=RunCaches)


def comfy_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int) -> torch.Tensor:
    return optimized_attention(q, k, v, heads=heads)


def memory_forward_wrapper(executor, x, timestep, context, clip_fea=None, time_dim_concat=None,
                           transformer_options={}, **kwargs):
    injection: MemoryInjection | None = transformer_options.get(WRAPPER_KEY)
    model = executor.class_obj
    if injection is None or not hasattr(model, "blocks") or time_dim_concat is not None:
        return executor(x, timestep, context, clip_fea, time_dim_concat, transformer_options, **kwargs)
    t, h, w = x.shape[2:]
    padded = comfy.ldm.common_dit.pad_to_patch_size(x, model.patch_size)
    frame_times = torch.arange(injection.first_frame_time, injection.first_frame_time + padded.shape[2], device=x.device)
    memory = injection.memory.to(device=x.device, dtype=x.dtype)
    if memory.recent_latents is not None:  # padded like the sampled latents, so both share one token grid
        memory = replace(memory, recent_latents=comfy.ldm.common_dit.pad_to_patch_size(memory.recent_latents,
                                                                                        model.patch_size))
    with use_attention(comfy_attention):
        cache = injection.runs.for_run(transformer_options.get("sample_sigmas"))
        out = wan_forward(model, padded, timestep, context, memory, frame_times, clip_fea, cache)
    return out[:, :, :t, :h, :w]


def with_memory(model_patcher, injection: MemoryInjection):
    """A clone of `model_patcher` whose Wan forward sees `injection`; the original stays untouched."""
    patched = model_patcher.clone()
    options = patched.model_options.setdefault("transformer_options", {})
    options[WRAPPER_KEY] = injection
    patched.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, memory_forward_wrapper)
    return patched
