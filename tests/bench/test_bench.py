"""The quick speed bench: every figure present and related in ways no timing fluke can break. No timed asserts."""
from __future__ import annotations

import json

import cv2
import pytest

from pfp_core.bench.speed import FIGURE_SIZE, STAGES, run_speed
from pfp_core.cli import build_parser


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    stages = []
    results = run_speed(out, quick=True, on_stage=stages.append)
    return out, results, stages


def test_writes_json_markdown_and_png(bench):
    out, results, stages = bench
    assert stages == list(STAGES)
    assert json.loads((out / "speed.json").read_text()) == json.loads(json.dumps(results))
    image = cv2.imread(str(out / "speed.png"))
    assert image is not None and image.shape == (*FIGURE_SIZE, 3)
    markdown = (out / "speed.md").read_text()
    assert "python -m pfp_core bench speed --quick" in markdown
    assert results["machine"]["cpu"] in markdown and "## Targets" in markdown
    assert "**no**" in markdown or all(v["met"] for v in results["verdicts"])


def test_machine_and_peak(bench):
    _, r, _ = bench
    assert r["machine"]["logical_cores"] >= 1 and r["machine"]["torch"]
    assert r["matmul_peak"]["gflops_fp32"] > 0 and r["matmul_peak"]["gflops_bf16"] > 0


def test_per_chunk_cost_figures(bench):
    _, r, _ = bench
    rate = r["embedded_rate"]
    for case in r["per_chunk"].values():
        full_20s_tokens = case["flop_model"]["full_20s_tokens"]
        assert case["chunk_tokens"] > 0
        for count in case["memory_tokens"].values():
            assert 0 < count < full_20s_tokens  # memory compresses the same 20 s history
        assert case["memory_tokens"]["4x4x2"] < case["memory_tokens"][rate]
        assert case["flop_model"][f"full_20s_vs_memory_{rate}"] > 1
        for dtype in ("fp32", "bf16"):
            row = case["dtypes"][dtype]
            for key in ("no_history_s", f"memory_{rate}_s", "memory_4x4x2_s", "full_20s_projected_s"):
                assert row[key] > 0
            for key in (f"memory_{rate}_vs_no_history", "full_longest_vs_no_history", f"full_longest_vs_memory_{rate}"):
                assert row[key] > 0
            full = row["full_history"]
            assert str(row["full_longest_history_seconds"]) in full
            tokens = [entry["tokens"] for entry in full.values()]
            assert tokens == sorted(tokens) and all(t % (case["chunk_tokens"] // 8) == 0 for t in tokens)
        assert case["dtypes"]["bf16"]["full_history"].keys() == case["dtypes"]["fp32"]["full_history"].keys()


def test_per_chunk_sampling_paths(bench):
    """All steps with CFG through the sampler for each context path; timings positive, structure fixed."""
    _, r, _ = bench
    tiny, large = r["sampling"]["tiny"], r["sampling"][r["per_chunk"]["large"]["config"]["name"]]
    assert tiny["full_history_measured"] and not large["full_history_measured"]
    for case in (tiny, large):
        assert case["steps"] == 8 and case["cfg"] > 1 and case["context_tokens"] > 0
        assert case["flop_model"]["per_step_vs_cached"] > 1 and case["flop_model"]["full_history_vs_cached"] > 1
        for row in case["dtypes"].values():
            assert min(row[f"{path}_s"] for path in ("cached", "per_step", "no_history")) > 0
            assert "full_history_s" in row if case is tiny else "full_history_s" not in row
    assert sum("cached context" in v["target"] for v in r["verdicts"]) == 4
    assert {"5s_chunk", "1s_chunk"} <= set(r["planner_cached_context"])
    assert "## Per-chunk sampling cost" in (bench[0] / "speed.md").read_text()


def test_incremental_update_cost_is_flat_in_frames(bench):
    _, r, _ = bench
    u = r["updates"]
    inc, full = u["incremental_encoded_frames"], u["full_encoded_frames"]
    assert len(u["chunks"]) > 20 and len(u["incremental_s"]) == len(u["full_s"]) == len(u["chunks"])
    assert inc[2] == inc[20] <= u["chunk_frames"] + u["chunk_frames"] // 2
    assert full[20] > full[2] and full == sorted(full) and max(full) <= u["window_frames"] + 1
    assert all(i <= f for i, f in zip(inc, full))
    assert u["incremental_chunk20_vs_chunk2"] > 0 and u["full_chunk20_vs_chunk2"] > 0


def test_encoder_throughput_fractions(bench):
    _, r, _ = bench
    for name in ("tiny", "large"):
        row = r["encoder"][name]
        # the planner counts what runs; FlopCounterMode does not see the matmuls inside CPU SDPA (slab attention)
        assert 0.98 * row["flops_planner"] <= row["flops_counted"] <= row["flops_planner"]
        for dtype in ("fp32", "bf16"):
            # a timed ratio: its size is the bench's figure, not a test's (a busy machine can push it over 1)
            timing, peak = row[dtype], r["matmul_peak"][f"gflops_{dtype}"]
            assert timing["seconds"] > 0 and timing["gflops"] == pytest.approx(row["flops_planner"] / timing["seconds"] / 1e9)
            assert timing["peak_fraction"] == pytest.approx(timing["gflops"] / peak)


def test_demo_planner_and_verdicts(bench):
    _, r, _ = bench
    assert r["demo"]["seconds"] > 0 and r["demo"]["vs_one_dit_forward"] > 1
    p = r["planner_wan2.1-1.3b"]
    assert p["memory_tokens"] < p["full_history_tokens"] and p["attention_flops_ratio"] > 1
    assert p["flops_full_vs_memory"] > 1
    assert r["verdicts"] and all({"target", "case", "measured", "met"} <= set(v) for v in r["verdicts"])


def test_cli_parses_bench():
    args = build_parser().parse_args(["bench", "speed", "--quick", "--out", "x"])
    assert args.quick and args.out == "x" and args.what == "speed"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "slow"])
