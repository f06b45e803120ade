"""`bench gpu` at tiny shapes on the CPU: the same code as on a GPU, so CI runs it; real numbers in the report."""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import torch

from pfp_core.bench.bench_gpu import NO_CUDA, TINY, run_gpu_bench, write

REPO = Path(__file__).resolve().parents[2]


def real(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def test_tiny_gpu_bench_writes_real_figures(tmp_path):
    report = run_gpu_bench(TINY, torch.device("cpu"), tmp_path)
    write(report, tmp_path, "python -m pfp_core bench gpu --tiny")
    saved = json.loads((tmp_path / "gpu.json").read_text())
    assert saved["device"] == "CPU" and saved["bench"]["model"] == "tiny"
    for part in ("generation", "lora_training_step"):
        assert all(real(saved[part][key]) for key in ("seconds", "tokens_per_second", "peak_gb", "planned_gb"))
    assert saved["generation"]["dit_passes"] == 2 * TINY.steps  # CFG on: conditional and unconditional passes
    assert real(saved["lora_training_step"]["loss"])
    assert saved["chunk_tokens"] > 0 and saved["memory_tokens"] > 0
    assert saved["attention"]["backend"] == "sdpa"
    assert "scaled_dot_product" in saved["attention"]["sdpa_kernel"]  # the kernel the profiler saw, e.g. the CPU flash
    markdown = (tmp_path / "gpu.md").read_text()
    assert "LoRA r4 training step" in markdown and saved["attention"]["sdpa_kernel"] in markdown


def test_without_cuda_it_says_so_in_one_line_and_writes_nothing(tmp_path):
    if torch.cuda.is_available():
        return
    result = subprocess.run([sys.executable, "-m", "pfp_core", "bench", "gpu", "--out", str(tmp_path / "out")],
                            capture_output=True, text=True, timeout=900, cwd=REPO)
    assert result.returncode == 0 and result.stdout == NO_CUDA + "\n"
    assert not (tmp_path / "out").exists()
