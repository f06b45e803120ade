"""The Table 1 and Table 2 benches end to end on seconds-long budgets: real training, real scoring, real files."""
import json

import cv2
import numpy as np
import torch

from pfp_core.training import procedural
from pfp_core.training.procedural import returned_frames
from pfp_core.bench.table1 import PAPER_ROWS, Table1Settings, jobs_for, run_table1
from pfp_core.bench.table1 import quick as quick_table1
from pfp_core.bench.table2 import SCENES, VARIANTS, Table2Settings, frame_scores, run_table2, still_frames
from pfp_core.bench.table2 import jobs_for as table2_jobs
from pfp_core.bench.table2 import quick as quick_table2
from pfp_core.model.checkpoint import load_encoder


def test_table1_reports_every_row_and_resumes_from_its_cache(tmp_path):
    settings = quick_table1(Table1Settings())
    report = run_table1(settings, tmp_path / "out", tmp_path / "work")
    assert [(r["variant"], r["rate"]) for r in report["rows"]] == settings.rows()
    assert set(PAPER_ROWS) <= set(settings.rows())
    assert all(run["frames"] == settings.eval_videos * settings.eval_targets for run in report["runs"])
    table = (tmp_path / "out" / "table1.md").read_text()
    assert all(f"| {variant} | {rate} |" in table for variant, rate in settings.rows())
    assert cv2.imread(str(tmp_path / "out" / "table1.png")).shape[:2] == (520, 1100)
    losses = {job.folder: (job.folder / "loss.jsonl").read_text() for job in jobs_for(settings, tmp_path / "work")}
    again = run_table1(settings, tmp_path / "out", tmp_path / "work")
    assert again["rows"] == report["rows"]  # scores come back from the cache ...
    assert all((folder / "loss.jsonl").read_text() == log for folder, log in losses.items())  # ... without training


def test_table2_scores_every_model_against_the_still_frame(tmp_path):
    settings = quick_table2(Table2Settings())
    report = run_table2(settings, tmp_path / "out", tmp_path / "work")
    models = [(r["scene"], r["model"]) for r in report["rows"]]
    assert models == [(scene, model) for scene in SCENES for model in (*VARIANTS, "still frame")]
    assert all(np.isfinite(r["psnr"]) and r["colour_drift"] >= 0 for r in report["rows"])
    assert json.loads((tmp_path / "out" / "table2.json").read_text())["rows"] == report["rows"]
    strip = cv2.imread(str(tmp_path / "out" / "table2_frames.png"))
    assert strip.shape[0] == (1 + len(VARIANTS)) * 32 * 3  # ground truth + one row per model
    # the memory variants see the recent frames beside their memory, as the embedded pair does
    trained = {job.variant: job.folder for job in table2_jobs(settings, tmp_path / "work")}
    assert {variant: load_encoder(trained[variant] / "encoder.safetensors").config.recent_frames
            for variant in ("pfp", "no_pretrain", "large_patchifier")} == dict.fromkeys(
        ("pfp", "no_pretrain", "large_patchifier"), settings.recent_frames)
    assert settings.recent_frames > 0 and not (trained["sliding_window"] / "encoder.safetensors").exists()


def test_frame_scores_of_the_truth_are_perfect_and_a_still_frame_drifts():
    video = procedural.make_video(procedural.heldout_seed(3), 24)
    perfect = frame_scores(video.frames, video, prefix=8)
    assert len(perfect["psnr"]) == 16 and max(perfect["colour_drift"]) == 0
    assert min(perfect["psnr"]) >= 99  # identical frames: PSNR at its clamp
    still = frame_scores(still_frames(video, 8), video, prefix=8)
    assert still["psnr"][0] > still["psnr"][-1]  # the camera pans away from the held frame


def test_returned_frames_mark_the_camera_back_on_its_start_view():
    camera = np.array([[0, 0], [0, 0], [0, 4], [2, 8], [0, 4], [0, 0], [0, 0]])
    assert returned_frames(camera).tolist() == [False, False, False, False, False, True, True]
    assert not returned_frames(np.zeros((5, 2), dtype=int)).any()  # never left: never "returned"


def test_sliding_window_context_keeps_true_times():
    from pfp_core.config import encoder_config_for
    from pfp_core.model.context import ContextCompressor

    window = encoder_config_for("tiny", variant="none", recent_frames=3)
    memory = ContextCompressor(window, None, fps=8)(torch.randn(1, 16, 10, 16, 16), offset=0)
    assert memory.token_count == 3 * 64 and memory.latent_frames == 10
    assert memory.recent_start == 7 and memory.recent_latents.shape[2] == 3
