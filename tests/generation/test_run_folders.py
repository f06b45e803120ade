"""Run folders named by settings: the same settings give the same folder, any change another; retention keeps the
most recently used runs; a run shares leading chunks with another only where it would generate them the same."""
import json
import os
import time

import pytest

from pfp_core.generation.run_folders import latest_plain_run, prune_runs, run_folders, settings_folder, shared_chunks

SETTINGS = {"seed": 0, "steps": 8, "prompts": ["a", "a", "b"], "frames": [24, 8]}


def whole(total: int) -> int:
    return total // 8  # 8-frame chunks, no lead frame


def make_run(parent, settings: dict, age: float = 0.0):
    folder = settings_folder(parent, settings)
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps(settings))
    os.utime(folder, (time.time() - age, time.time() - age))
    return folder


def test_the_same_settings_find_the_same_folder_and_any_change_another(tmp_path):
    assert settings_folder(tmp_path, SETTINGS) == settings_folder(tmp_path, json.loads(json.dumps(SETTINGS)))
    assert settings_folder(tmp_path, SETTINGS) != settings_folder(tmp_path, {**SETTINGS, "seed": 1})
    assert settings_folder(tmp_path, SETTINGS).name.startswith("run_")


def test_retention_keeps_the_most_recently_used_runs_and_nothing_else_is_touched(tmp_path):
    runs = [make_run(tmp_path, {**SETTINGS, "seed": seed}, age=100 - seed) for seed in range(6)]
    (tmp_path / "notes.txt").write_text("mine")
    deleted = prune_runs(tmp_path, runs[0], limit=3)
    assert set(deleted) == set(runs[1:4]) and (tmp_path / "notes.txt").exists()
    assert set(run_folders(tmp_path)) == {runs[0], runs[4], runs[5]}


@pytest.mark.parametrize("change, shared", [
    ({"frames": [40, 8], "prompts": ["a", "a", "b", "b", "b"]}, 3),  # more seconds: every chunk of the shorter run
    ({"prompts": ["a", "a", "c"]}, 2),  # a prompt edited from chunk 2 on
    ({"frames": [20, 8]}, 2),  # shorter: its last chunk is cut, so it is not shared
    ({"seed": 1}, 0), ({"frames": [24, 4]}, 0),  # another seed, another chunk length
])
def test_a_run_shares_the_leading_chunks_it_would_generate_the_same(change, shared):
    assert shared_chunks(SETTINGS, {**SETTINGS, **change}, whole) == shared
    assert shared_chunks({}, SETTINGS, whole) == 0  # a damaged manifest shares nothing


def test_keep_chunks_takes_from_the_latest_run_that_kept_none(tmp_path):
    with pytest.raises(ValueError, match="^keep_chunks: run_name 'x' has no earlier run"):
        latest_plain_run(tmp_path, "x")
    plain = make_run(tmp_path, SETTINGS, age=10)
    make_run(tmp_path, {**SETTINGS, "kept": {"run": plain.name, "chunks": 2}})
    assert latest_plain_run(tmp_path, "x") == plain
