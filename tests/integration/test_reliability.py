"""Reliability through a real ComfyUI's /prompt (tests/integration/comfy_reliability.py): every bad input of the
catalog fails naming its field with the server still up, interrupted runs re-queue to the frames of an
uninterrupted run, and a short batch keeps resident memory and leftover files flat. One server for the module;
reliability_bench.py runs the same code with 20 interruptions and 50 prompts."""
import pytest

from comfy_env import comfy_path, comfy_server
from comfy_reliability import ACCEPTED, CASES, batch_soak, comfy_interruptions, run_case


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_path()
    with comfy_server(tmp_path_factory.mktemp("comfy")) as running:
        yield running


def test_the_catalog_has_at_least_25_error_cases():
    assert len(CASES) >= 25 and len({c.name for c in CASES + ACCEPTED}) == len(CASES + ACCEPTED)


@pytest.mark.parametrize("case", CASES + ACCEPTED, ids=lambda case: case.name)
def test_bad_input_fails_naming_the_field_and_the_server_stays_up(server, case):
    run_case(server, case)


def test_interrupted_runs_requeue_to_the_frames_of_an_uninterrupted_run(server):
    results = comfy_interruptions(server, count=2, seed=1)
    assert sum(r.stopped for r in results) == 2, [r.row() for r in results]
    assert all(r.survived for r in results), [r.row() for r in results]


def test_a_batch_keeps_memory_and_leftover_files_flat(server):
    soak = batch_soak(server, prompts=8, warmup=5)
    assert soak["succeeded"] == 8 and soak["server_up"], soak
    assert soak["rss_drift_pct"] <= 5, soak
    assert soak["leftover_after_last"] == soak["leftover_after_warmup"], soak
    assert soak["files_per_run_folder"] == [4], soak  # manifest.json + 3 chunks, nothing else
