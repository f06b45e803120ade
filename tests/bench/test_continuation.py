import json

import numpy as np
import pytest

from pfp_core.training import storyworld
from pfp_core.cli import main
from pfp_core.bench.continuation import (ContinuationSettings, baseline_frames, camera_motion, evaluate_continuation,
                                         pooled_psnr, scene_figures)


def truth(video, seed):
    return video.frames


def repeat_last(video, seed):
    return baseline_frames(video, 8)["repeat_last"]


@pytest.fixture(scope="module")
def truth_report():
    return evaluate_continuation(truth, repeat_last, ContinuationSettings(videos=4))


def test_the_real_future_beats_every_baseline_and_follows_its_storyboard(truth_report):
    for scene in storyworld.SCENES:
        model, baselines = truth_report["scenes"][scene]["model"], truth_report["scenes"][scene]["baselines"]
        assert model["psnr"] > 100 and model["drift"] == 0
        assert all(row["psnr"] < 30 for row in baselines.values())
    assert truth_report["storyboard"]["adherence"] >= 0.9
    assert truth_report["storyboard"]["shuffled_control"] <= 0.5
    assert all(target["met"] for name, target in truth_report["targets"].items() if "drift" not in name)


def test_copying_baselines_fail_the_targets(truth_report):
    failing = evaluate_continuation(repeat_last, repeat_last, ContinuationSettings(videos=2))
    assert not failing["targets"]["adherence_at_least_0.9"]["met"]  # a still camera cannot follow the pans
    assert not failing["targets"]["static_psnr_above_every_baseline"]["met"]


def test_camera_motion_sign_and_size_from_frames_alone():
    video = next(v for v in (storyworld.make_story_video(s, 8, "panning") for s in range(20))
                 if v.events[1] == "camera pans right")
    assert camera_motion(video.frames[7:16]) == pytest.approx(4.0, abs=0.5)
    assert abs(camera_motion(video.frames[:8])) < 0.5


def test_reentry_scores_only_the_objects_that_came_back():
    video = next(v for v in (storyworld.make_story_video(s, 8, "static") for s in range(20)) if v.returns)
    wrong_objects = video.frames.copy()
    start, index = video.returns[0]
    wrong_objects[video.object_masks[index]] = 0
    figures = scene_figures(wrong_objects, video, 8)
    assert figures["psnr_reentry"] < 15 < figures["psnr_background"]
    assert pooled_psnr(video.frames, video.frames, np.zeros(video.frames.shape[:3], bool)) != pooled_psnr(
        video.frames, video.frames, np.ones(video.frames.shape[:3], bool))  # NaN without pixels


def test_eval_continuation_prints_the_fixed_fields_last(capsys):
    assert main(["eval-continuation", "--videos", "1", "--steps", "1", "--seed", "7", "--json", "--quiet"]) == 0
    report = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    static, panning = report["scenes"]["static"], report["scenes"]["panning"]
    for scene, extra in ((static, "psnr_reentry"), (panning, "psnr_return")):
        assert {"psnr", "psnr_background", "drift", extra} <= set(scene["model"])
        assert set(scene["baselines"]) == {"repeat_last", "mean_given", "repeat_first", "sliding_window"}
    assert {"adherence", "shuffled_control"} <= set(report["storyboard"])
    assert report["settings"]["seed"] == 7


def test_a_camera_pair_with_its_zero_head_pans_as_asked_and_the_camera_ablation_does_not():
    """The untrained head's chunk is its flow start: for a pair with camera_speed 1 the last frame moved with the
    planned camera, so its frames follow the storyboard's first pan; with settings.placed_positions False the same
    pair reads screen positions and holds still, as a pair that records no camera speed does."""
    from dataclasses import replace

    import torch

    from pfp_core.bench.continuation import continue_video, segment_motions, storyboard_motions
    from pfp_core.config import dit_config, encoder_config_for
    from pfp_core.generation.pipeline import Engine
    from pfp_core.model.dit import WanDiT
    from pfp_core.model.encoder import MemoryEncoder
    from pfp_core.model.text import HashTextEncoder
    from pfp_core.model.vae import SpaceToDepthVAE

    config = encoder_config_for("tiny", variant="none", recent_frames=1, anchor_noise=1e-3)
    engine = lambda speed: Engine(WanDiT(dit_config("tiny")).eval(), MemoryEncoder(replace(config, camera_speed=speed,
                                  chunk_frames=8, sampling_steps=1)), SpaceToDepthVAE(), HashTextEncoder(4096, 32))
    video = next(v for v in (storyworld.make_story_video(storyworld.story_seed(s), 2, "panning") for s in range(20))
                 if v.events[1] == "camera pans right")
    settings = ContinuationSettings(videos=1, total_frames=16)
    with torch.no_grad():
        placed = continue_video(engine(1.0), video, settings, 0)
        screen = continue_video(engine(1.0), video, replace(settings, placed_positions=False), 0)
        plain = continue_video(engine(0.0), video, settings, 0)
    assert storyboard_motions(video, 8) == segment_motions(placed, 8, 8) == [1]
    assert segment_motions(screen, 8, 8) == [0] and np.array_equal(screen, plain)
