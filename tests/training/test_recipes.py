import shutil

from pfp_core.model.checkpoint import load_encoder
from pfp_core.generation.pipeline import DEFAULT_DIT, DEFAULT_ENCODER
from pfp_core.training.recipes import RECENT_FRAMES, SLIDING_WINDOW_FRAMES, train_tiny


def test_the_tiny_recipe_runs_its_seven_stages_and_resumes(tmp_path):
    start = tmp_path / "start"
    start.mkdir()
    shutil.copy(DEFAULT_DIT, start / "dit.safetensors")
    shutil.copy(DEFAULT_ENCODER, start / "encoder.safetensors")
    train_tiny(tmp_path / "runs", start, finetune_steps=1, progress=False, pretrain_steps=1, change_steps=1,
               unroll_steps=1)
    pfp = load_encoder(tmp_path / "runs" / "pfp_unroll" / "encoder.safetensors").config
    window = load_encoder(tmp_path / "runs" / "sw_unroll" / "encoder.safetensors").config
    assert (pfp.variant, pfp.recent_frames, pfp.rate, pfp.predict_change) == ("proposed", RECENT_FRAMES, "2x2x2", True)
    assert (window.variant, window.recent_frames, window.predict_change) == ("none", SLIDING_WINDOW_FRAMES, True)
    assert pfp.anchor_noise == window.anchor_noise == 0.5 and pfp.sampling_steps == window.sampling_steps == 1
    logs = sorted(p.parent.name for p in (tmp_path / "runs").glob("*/loss.jsonl"))
    assert logs == ["pfp_change", "pfp_ft", "pfp_pre", "pfp_unroll", "sw_change", "sw_ft", "sw_unroll"]
    before = (tmp_path / "runs" / "sw_unroll" / "loss.jsonl").read_text()
    train_tiny(tmp_path / "runs", start, finetune_steps=1, progress=False, pretrain_steps=1, change_steps=1,
               unroll_steps=1)
    assert (tmp_path / "runs" / "sw_unroll" / "loss.jsonl").read_text() == before  # all done: no new steps
