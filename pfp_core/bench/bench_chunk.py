"""Per-chunk sampling cost: all denoising steps with classifier-free guidance, as the sampler runs them, for each
way a chunk can see its past. Part of `bench speed` (pfp_core/bench/speed.py).

- cached: the clean-context pattern, the context's keys and values computed once for the chunk
  (pfp_core.model.dit.context_stream) and reused by every step and both CFG halves;
- per-step: the joint pattern, the same context tokens pushed through every layer at every forward;
- no history: the chunk alone;
- full history: the raw 20 s history joined to the chunk (run where it fits the time budget, else projected).
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import torch

from ..model.context import build_context
from ..model.dit import WanDiT
from ..model.encoder import MemoryEncoder
from ..model.memory import Memory, empty_memory, with_recent
from ..generation.pipeline import FlowChunkSampler, SamplerSettings
from ..planner import CHUNK_STEPS, chunk_flops_by_path
from ..model.text import HashTextEncoder

STEPS, CFG = CHUNK_STEPS, 3.0  # the comparison point: 8 steps with guidance (two forwards a step)
TARGET_CACHED_VS_PER_STEP = 1.5  # the cached path at least this much cheaper than the per-step path
PATHS = ("cached", "per_step", "no_history", "full_history")


def contexts(dit: WanDiT, encoder: MemoryEncoder, history: torch.Tensor, fps: float,
             full_history: bool) -> dict[str, Memory]:
    """The memory each path samples with, all from the same 20 s history latents [1, C, T, h, w]."""
    joint = dataclasses.replace(encoder.config, clean_context=False)
    with torch.no_grad():
        per_step = build_context(joint, lambda older: encoder.encode(older, fps), history, fps)
    found = {"cached": dataclasses.replace(per_step, clean_context=True), "per_step": per_step,
             "no_history": empty_memory(1, dit.config.dim)}
    if full_history:
        found["full_history"] = with_recent(empty_memory(1, dit.config.dim), history, history.shape[2],
                                            dit.config.patch_size)
    return found


def chunk_sampler(dit: WanDiT, memory: Memory, chunk_shape: tuple[int, ...], first_time: int,
                  dtype: str) -> Callable[[], object]:
    sampler = FlowChunkSampler(dit, HashTextEncoder(dit.config.text_dim, dit.config.text_len),
                               SamplerSettings(steps=STEPS, cfg=CFG))
    times = torch.arange(first_time, first_time + chunk_shape[2])

    def run() -> torch.Tensor:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
            return sampler(memory, times, "camera holds", chunk_shape, 0, lambda *progress: None)
    return run


def sampling_costs(dit: WanDiT, encoder: MemoryEncoder, history: torch.Tensor, chunk_shape: tuple[int, ...],
                   fps: float, time_chunk: Callable[[Callable[[], object]], float], full_history: bool) -> dict:
    """Seconds per chunk for each path and dtype, the ratios the issue asks for, and the FLOP model's view."""
    memories = contexts(dit, encoder, history, fps, full_history)
    video_tokens = chunk_shape[2] * (chunk_shape[3] // dit.patch_size[1]) * (chunk_shape[4] // dit.patch_size[2])
    result = {"steps": STEPS, "cfg": CFG, "video_tokens": video_tokens,
              "context_tokens": memories["per_step"].token_count, "dtypes": {},
              "full_history_measured": full_history}
    for dtype in ("fp32", "bf16"):
        row = {f"{path}_s": time_chunk(chunk_sampler(dit, memory, chunk_shape, history.shape[2], dtype))
               for path, memory in memories.items()}
        row["per_step_vs_cached"] = row["per_step_s"] / row["cached_s"]
        row["cached_vs_no_history"] = row["cached_s"] / row["no_history_s"]
        row["per_step_vs_no_history"] = row["per_step_s"] / row["no_history_s"]
        if full_history:
            row["full_history_vs_cached"] = row["full_history_s"] / row["cached_s"]
        result["dtypes"][dtype] = row
    flops = chunk_flops_by_path(dit.config, video_tokens, result["context_tokens"], dit.config.text_len,
                                history.shape[2] * video_tokens // chunk_shape[2])
    result["flop_model"] = {**flops, "per_step_vs_cached": flops["per_step"] / flops["cached"],
                            "full_history_vs_cached": flops["full_history"] / flops["cached"]}
    return result


def sampling_verdicts(costs: dict[str, dict]) -> list[dict]:
    out = []
    for name, case in costs.items():
        for dtype, row in case["dtypes"].items():
            out.append({"target": f"cached context >= {TARGET_CACHED_VS_PER_STEP:g}x cheaper than per-step, "
                                  f"{STEPS} steps with CFG",
                        "case": f"{name} {dtype}, {case['context_tokens']} context tokens, one chunk",
                        "measured": row["per_step_vs_cached"],
                        "met": row["per_step_vs_cached"] >= TARGET_CACHED_VS_PER_STEP})
    return out


def format_sampling(costs: dict[str, dict]) -> list[str]:
    lines = ["## Per-chunk sampling cost: cached context vs per-step context", "",
             f"One chunk, {STEPS} Euler steps with CFG {CFG:g} (two forwards a step) through the sampler, 20 s of "
             "history. cached: the clean-context pattern, the context's keys and values computed once per chunk; "
             "per-step: the same context tokens joined to the chunk at every forward; full history: the raw 20 s "
             "joined to the chunk.", "",
             "| model | dtype | context tokens | cached s | per-step s | no history s | full history s | "
             "per-step / cached | cached / no history | FLOP model per-step / cached |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for name, case in costs.items():
        for dtype, row in case["dtypes"].items():
            full = f"{row['full_history_s']:.3g}" if "full_history_s" in row else "not run (budget)"
            lines.append(f"| {name} | {dtype} | {case['context_tokens']} | {row['cached_s']:.3g} | "
                         f"{row['per_step_s']:.3g} | {row['no_history_s']:.3g} | {full} | "
                         f"{row['per_step_vs_cached']:.2f} | {row['cached_vs_no_history']:.2f} | "
                         f"{case['flop_model']['per_step_vs_cached']:.2f} |")
    return lines + [""]
