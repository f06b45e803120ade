import json

import numpy as np

from dataclasses import replace

from pfp_core.bench.bench_continuation import (ContinuationBench, ablation_settings, cached, figure, markdown, places,
                                             progress_total, rollout_drift, run_bench)
from pfp_core.bench.continuation import ContinuationSettings, baseline_frames, evaluate_continuation
from pfp_core.config import encoder_config_for
from pfp_core.training import storyworld


def truth(video, seed):
    return video.frames


def repeat_last(video, seed):
    return baseline_frames(video, 8)["repeat_last"]


def test_rollout_drift_is_zero_for_the_truth_and_grows_for_a_still_frame():
    bench = ContinuationBench(rollout_seconds=12, rollout_videos=1)
    rollout = rollout_drift({"model": truth}, bench, ContinuationSettings())
    for scene, curves in rollout["drift"].items():
        assert len(curves["model"]) == 12 and max(curves["model"]) == 0
        assert max(curves["repeat_last"]) > 1


def test_cached_generates_each_video_once():
    calls = []
    generate = cached(lambda video, seed: calls.append(seed) or video.frames)
    settings = ContinuationSettings(videos=1)
    evaluate_continuation(truth, generate, settings)
    evaluate_continuation(truth, generate, settings)
    assert calls == [0, 0]  # one per scene, whatever the number of reports


def test_report_renders_as_markdown_and_a_figure():
    settings = ContinuationSettings(videos=1)
    model = evaluate_continuation(truth, repeat_last, settings)
    report = {"bench": {"sampling_steps": {"model": 1, "sliding_window": 2}}, "model": model,
              "ablations": {name: {s: model["scenes"][s]["model"] for s in model["scenes"]}
                            for name in ("no_projection", "screen_positions")},
              "rollout": rollout_drift({"model": truth}, ContinuationBench(rollout_seconds=9, rollout_videos=1), settings),
              "object_events": {"leaves": {"events": 3, "model": 12.5, "sliding_window": 12.25, "repeat_last": 12.0}}}
    text = markdown(json.loads(json.dumps(report)), "python -m pfp_core bench continuation")
    assert "| pfp, chunks not projected |" in text and "| pfp, screen positions (no camera, no object shift) |" in text
    assert "| pfp (embedded) |" in text and "adherence_at_least_0.9" in text and "## Drift over a 9 s rollout" in text
    assert "Euler steps per chunk, each pair the steps it was finetuned for: model 1, sliding_window 2." in text
    assert "| leaves | 3 | 12.50 | 12.25 | 12.00 |" in text
    image = figure(report)
    assert image.dtype == np.uint8 and image.shape[2] == 3 and (image < 250).mean() > 0.01  # something is drawn


def test_the_bench_on_the_embedded_pair_ticks_its_progress_total_and_measures_the_position_ablation():
    """The embedded pair records a camera and an object speed, so the bench adds the screen-position ablation,
    which changes both scenes (the panning one through the camera, the static one through the object shift), and
    its progress bar ends at its total."""
    bench = ContinuationBench(videos=1, rollout_seconds=9, rollout_videos=1)
    ticks = []
    report, frames = run_bench(bench, ticks.append)
    assert len(ticks) == progress_total(bench)
    assert set(report["ablations"]) == {"no_projection", "screen_positions"}
    assert report["object_events"]["leaves"]["events"] >= 1  # second 1 of a static video always sends one away
    for scene in storyworld.SCENES:
        assert report["ablations"]["screen_positions"][scene] != report["model"]["scenes"][scene]["model"], scene


def test_a_pair_that_follows_objects_alone_gets_the_position_ablation_and_a_screen_pair_none():
    config = encoder_config_for("tiny", rate="2x2x2", recent_frames=2)
    for speeds, expected in (({}, False), ({"object_speed": 1.0}, True), ({"camera_speed": 1.0}, True)):
        assert places(replace(config, **speeds)) is expected
        names = set(ablation_settings(ContinuationSettings(), places(replace(config, **speeds))))
        assert names == ({"no_projection", "screen_positions"} if expected else {"no_projection"})
