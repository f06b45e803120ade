"""The planner bench on the tiny case: the planner's memory figures against peaks measured on CPU. Memory bytes
are deterministic, so the ratio band is asserted; nothing here is timed."""
from __future__ import annotations

import json

import cv2
import pytest

from pfp_core.bench.bench_planner import BAND, FIGURE_SIZE, STAGES, bench_cases, planned, run_planner
from pfp_core.planner import plan


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench_planner")
    stages = []
    return out, run_planner(out, quick=True, on_stage=stages.append), stages


def test_memory_measured_on_cpu_is_within_the_band_of_the_plan(bench):
    _, r, _ = bench
    memory = [v for v in r["verdicts"] if v["dtype"] != "-"]
    assert {(v["dtype"], v["figure"]) for v in memory} == {
        (dtype, figure) for dtype in ("fp32", "bf16")
        for figure in ("weight_bytes", "dit_activation_bytes", "encoder_activation_bytes")}
    for v in memory:
        assert BAND[0] <= v["measured"] / v["planned"] <= BAND[1], v
    bf16 = {v["figure"]: v["measured"] for v in memory if v["dtype"] == "bf16"}
    fp32 = {v["figure"]: v["measured"] for v in memory if v["dtype"] == "fp32"}
    assert bf16["weight_bytes"] * 2 == fp32["weight_bytes"]
    assert bf16["dit_activation_bytes"] < fp32["dit_activation_bytes"]  # float32 RoPE work keeps it above half


def test_counts_equal_the_plan_of_the_same_video(bench):
    _, r, _ = bench
    counts = {v["figure"]: v for v in r["verdicts"] if v["dtype"] == "-"}
    figures = plan("tiny", 32, 32, 8, 20.0, rate="2x2x2", chunk_seconds=1.0, dtype_bytes=4, text_tokens=32, batch=1)
    assert counts["tokens"]["measured"] == figures["chunk_tokens"] + figures["memory_tokens"]
    assert counts["dit_flops"]["measured"] == figures["dit_flops_per_step_memory"]
    assert counts["encoder_flops"]["measured"] == figures["encoder_flops"]
    expected = planned(bench_cases(quick=True)[0], 4)
    assert figures["activation_gb"] == round(expected["dit_activation_bytes"] / 1e9, 3)


def test_writes_json_markdown_and_png(bench):
    out, r, stages = bench
    assert stages == ["machine", "tiny", "ComfyUI settings", "report"] and set(stages) <= set(STAGES)
    assert json.loads((out / "planner.json").read_text()) == json.loads(json.dumps(r))
    image = cv2.imread(str(out / "planner.png"))
    assert image is not None and image.shape == (*FIGURE_SIZE, 3)
    markdown = (out / "planner.md").read_text()
    assert "python -m pfp_core bench planner --quick" in markdown and r["machine"]["cpu"] in markdown
    assert "| DiT forward peak activations | bf16 |" in markdown
    assert markdown.count("| setting | text encode |") == 2 and "not measured on a GPU" in markdown
