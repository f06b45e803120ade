"""Whether bf16 autocast is faster than fp32 for a given workload on this machine, measured, not assumed.

bf16 autocast is about 6x faster than fp32 on a Xeon with AMX and about 10x slower on an AVX2-only CPU, and a
matmul micro-benchmark can disagree with a whole model (convolutions, attention and norms have their own bf16
kernels, or none), so the caller's own step is timed both ways. GPUs with bf16 support use it.
"""
from __future__ import annotations

import time
from typing import Callable

import torch


def best_seconds(run: Callable[[], None], repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        best = min(best, time.perf_counter() - started)
    return best


def bf16_is_faster(step: Callable[[bool], None], device_type: str, repeats: int = 2) -> bool:
    """step(bf16) runs one forward + backward of the real workload; True if bf16 takes under 0.8x the fp32 time."""
    if device_type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device_type != "cpu":
        return False
    step(False)  # warm-up: first calls pay for allocation and kernel selection
    step(True)
    return best_seconds(lambda: step(True), repeats) < 0.8 * best_seconds(lambda: step(False), repeats)
