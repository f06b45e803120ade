import json
import shutil

from safetensors import safe_open

from pfp_core.model.checkpoint import load_encoder
from pfp_core.generation.pipeline import DEFAULT_DIT, DEFAULT_ENCODER
from pfp_core.training.recipes import (CAMERA_COOLDOWN_LR, CAMERA_SPEED, COOLDOWN_LR, LONG_OBJECT_LR, LONG_OBJECT_SCENES,
                                      OBJECT_SPEED, RECENT_FRAMES, SLIDING_WINDOW_FRAMES, RecipeSteps, train_tiny)


ONE_STEP = RecipeSteps(*[1] * 11)


def test_the_tiny_recipe_runs_its_twenty_one_stages_and_resumes(tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    shutil.copy(DEFAULT_DIT, start / "dit.safetensors")
    shutil.copy(DEFAULT_ENCODER, start / "encoder.safetensors")
    train_tiny(tmp_path / "runs", start, ONE_STEP, progress=False)
    pfp = load_encoder(tmp_path / "runs" / "pfp_long_objects_cooldown" / "encoder.safetensors").config
    window = load_encoder(tmp_path / "runs" / "sw_long_objects_cooldown" / "encoder.safetensors").config
    assert (pfp.variant, pfp.recent_frames, pfp.rate, pfp.predict_change) == ("proposed", RECENT_FRAMES, "2x2x2", True)
    assert (window.variant, window.recent_frames, window.predict_change) == ("none", SLIDING_WINDOW_FRAMES, True)
    assert pfp.anchor_noise == window.anchor_noise == 0.5 and pfp.sampling_steps == window.sampling_steps == 1
    assert pfp.camera_speed == window.camera_speed == CAMERA_SPEED
    assert pfp.object_speed == window.object_speed == OBJECT_SPEED
    assert load_encoder(tmp_path / "runs" / "pfp_camera_cooldown" / "encoder.safetensors").config.object_speed == 0
    assert load_encoder(tmp_path / "runs" / "pfp_cooldown" / "encoder.safetensors").config.camera_speed == 0
    # trained on zero-padded captions, as the embedded pair was
    assert pfp.text_padding == window.text_padding == load_encoder(DEFAULT_ENCODER).config.text_padding == "zeros"
    settings = lambda run: json.loads(safe_open(str(tmp_path / "runs" / run / "dit.safetensors"), "pt").metadata()["settings"])
    cooldown, camera, camera_cooldown = settings("pfp_cooldown"), settings("pfp_camera"), settings("pfp_camera_cooldown")
    objects, object_cooldown = settings("sw_objects"), settings("sw_objects_cooldown")
    assert (cooldown["lr"], cooldown["seed"], cooldown["unroll"], cooldown["init_from"]) == (
        COOLDOWN_LR, 1, 3, str(tmp_path / "runs" / "pfp_unroll"))
    assert (camera["lr"], camera["seed"], camera["unroll"], camera["init_from"]) == (
        COOLDOWN_LR, 2, 3, str(tmp_path / "runs" / "pfp_cooldown"))
    assert (camera_cooldown["lr"], camera_cooldown["camera_speed"], camera_cooldown["init_from"]) == (
        CAMERA_COOLDOWN_LR, CAMERA_SPEED, str(tmp_path / "runs" / "pfp_camera"))
    assert (objects["lr"], objects["seed"], objects["init_from"]) == (COOLDOWN_LR, 3, str(tmp_path / "runs" / "sw_camera_cooldown"))
    assert (object_cooldown["lr"], object_cooldown["seed"], object_cooldown["init_from"]) == (
        CAMERA_COOLDOWN_LR, 3, str(tmp_path / "runs" / "sw_objects"))
    long_objects, long_cooldown = settings("pfp_long_objects"), settings("pfp_long_objects_cooldown")
    assert (long_objects["lr"], long_objects["seed"], tuple(long_objects["scenes"]), long_objects["init_from"]) == (
        LONG_OBJECT_LR, 5, LONG_OBJECT_SCENES, str(tmp_path / "runs" / "pfp_objects_cooldown"))
    assert (long_cooldown["lr"], long_cooldown["seed"], tuple(long_cooldown["scenes"]), long_cooldown["init_from"]) == (
        CAMERA_COOLDOWN_LR, 5, LONG_OBJECT_SCENES, str(tmp_path / "runs" / "pfp_long_objects"))
    logs = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/loss.jsonl"))
    kinds = ["camera", "camera_cooldown", "change", "cooldown", "ft", "objects", "objects_cooldown",
             "long_objects", "long_objects_cooldown"]
    assert logs == sorted([f"pfp_{kind}" for kind in kinds + ["pre", "unroll"]] + [f"sw_{kind}" for kind in kinds + ["unroll"]])
    before = (tmp_path / "runs" / "sw_long_objects_cooldown" / "loss.jsonl").read_text()
    train_tiny(tmp_path / "runs", start, ONE_STEP, progress=False)
    assert (tmp_path / "runs" / "sw_long_objects_cooldown" / "loss.jsonl").read_text() == before  # all done: no new steps
