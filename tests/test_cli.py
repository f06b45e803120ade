import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pfp_core.cli import main
from pfp_core.video_io import read_video, save_image

SUBCOMMANDS = ["demo", "generate", "plan", "eval-retrieval", "pretrain", "finetune", "export"]


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pfp_core", *args], capture_output=True, text=True, timeout=300,
                          cwd=Path(__file__).parents[1])


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: python -m pfp_core " + command in capsys.readouterr().out


@pytest.mark.parametrize("args,field", [(["plan", "--model", "wan9"], "model"),
                                        (["plan", "--model", "tiny", "--fps", "-3"], "--fps"),
                                        (["generate", "--image", "x.png"], "--storyboard"),
                                        (["demo", "--seconds", "0"], "--seconds"),
                                        (["demo", "--steps", "abc"], "--steps"),
                                        (["pretrain", "--out", "x", "--lora-rank", "-1"], "--lora-rank"),
                                        (["pretrain", "--out", "x", "--model", "tiny", "--dit-init", "w"], "--dit-init"),
                                        (["pretrain", "--out", "x", "--dit-init", "no.safetensors"], "dit-init"),
                                        (["pretrain", "--out", "x", "--lora-rank", "4"], "lora-rank"),
                                        (["pretrain", "--out", "x", "--device", "tpu"], "--device"),
                                        (["export", "--from", "no_such_dir", "--out", "x"], "from"),
                                        (["plan", "--model", "tiny", "--training", "--batch", "0"], "--batch")])
def test_bad_arguments_exit_nonzero_with_one_line_naming_the_field(args, field, capsys):
    try:
        code = main(args)
    except SystemExit as exit_info:
        code = exit_info.code
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert len(err.splitlines()) == 1 and field in err


def test_plan_json_for_wan_1_3b_fits_the_papers_budget(capsys):
    assert main(["plan", "--model", "wan2.1-1.3b", "--width", "832", "--height", "480", "--fps", "16",
                 "--history-seconds", "20", "--rate", "4x4x2", "--json"]) == 0
    figures = json.loads(capsys.readouterr().out)
    assert figures["memory_tokens"] <= 5000
    assert figures["full_history_tokens"] == 81 * 30 * 52
    assert figures["attention_flops_ratio"] > 10 and figures["weights_gb"] > 2
    assert {"chunk_tokens", "memory_tokens"} <= set(figures)


def test_demo_writes_a_video_with_the_promised_frames(tmp_path):
    result = cli("demo", "--out", str(tmp_path), "--seconds", "3", "--steps", "4", "--quiet")
    assert result.returncode == 0, result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert summary.startswith("demo: 24 frames (3.00 s at 8 fps), 2 chunks")  # the first second is given
    frames, fps = read_video(tmp_path / "demo.mp4")
    assert frames.shape == (24, 32, 32, 3) and fps == 8
    assert (tmp_path / "demo_frames.png").stat().st_size > 0


def test_generate_resumes_from_its_chunk_folder_and_rejects_bad_storyboards(tmp_path):
    image = (np.indices((48, 64)).sum(0) % 7 * 36).astype(np.uint8)[..., None].repeat(3, -1)
    save_image(image, tmp_path / "start.png")
    args = ["generate", "--image", str(tmp_path / "start.png"), "--storyboard", "0s: a cat / 1s: a dog",
            "--seconds", "2", "--steps", "3", "--out", str(tmp_path / "v.mp4"), "--quiet"]
    first = cli(*args)
    assert first.returncode == 0, first.stderr
    again = cli(*args)
    assert "(2 resumed)" in again.stdout
    bad = cli(*args[:4], "5s: later / 1s: earlier", *args[5:])
    assert bad.returncode == 2 and bad.stderr.startswith("error: storyboard line") and len(bad.stderr.splitlines()) == 1


def test_lora_pretrain_then_export_through_the_cli(tmp_path, wan_file, capsys):
    out = tmp_path / "run"
    assert main(["pretrain", "--out", str(out), "--dit-init", str(wan_file), "--lora-rank", "4",
                 "--grad-checkpointing", "--device", "cpu", "--steps", "2", "--batch", "1", "--history-frames", "8",
                 "--quiet"]) == 0
    assert main(["export", "--from", str(out), "--out", str(tmp_path / "lora.safetensors"), "--lora"]) == 0
    assert main(["export", "--from", str(out), "--out", str(tmp_path / "dit.safetensors"), "--dtype", "fp16"]) == 0
    printed = capsys.readouterr().out
    assert "pretrain: steps 2" in printed and "export: LoRA (bf16" in printed and "export: DiT (fp16" in printed
    from pfp_core.model.checkpoint import load_dit

    assert load_dit(tmp_path / "dit.safetensors").config.name == "tiny"


def test_plan_training_shows_full_and_lora_with_and_without_checkpointing(capsys):
    assert main(["plan", "--model", "wan2.1-1.3b", "--training", "--chunk-seconds", "2", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [(r["mode"], r["grad_checkpointing"]) for r in rows] == [
        ("full", False), ("full", True), ("lora r32", False), ("lora r32", True)]
    assert main(["plan", "--model", "wan2.1-1.3b", "--training"]) == 0
    assert "lora r32" in capsys.readouterr().out


def test_a_finetune_records_its_chunk_length_and_generation_uses_it(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["finetune", "--out", str(out), "--rate", "2x2x2", "--world", "story", "--chunk-frames", "2",
                 "--steps", "1", "--batch", "1", "--history-frames", "8", "--quiet"]) == 0
    image = (np.indices((32, 32)).sum(0) % 5 * 50).astype(np.uint8)[..., None].repeat(3, -1)
    save_image(image, tmp_path / "start.png")
    assert main(["generate", "--image", str(tmp_path / "start.png"), "--storyboard", "0s: camera holds",
                 "--seconds", "1", "--steps", "2", "--encoder", str(out / "encoder.safetensors"),
                 "--dit", str(out / "dit.safetensors"), "--out", str(tmp_path / "v.mp4"), "--quiet"]) == 0
    assert "8 frames (1.00 s at 8 fps), 4 chunks" in capsys.readouterr().out  # frame 0 given, then 2 frames a chunk


def test_an_unrolled_finetune_records_one_sampling_step_and_generation_and_evaluation_use_it(tmp_path, capsys):
    """Each pair samples with the steps it was finetuned for unless --steps says otherwise: in generate, and in
    eval-continuation for the model and its sliding-window baseline separately."""
    from pfp_core.generation.pipeline import BASELINE_DIT, BASELINE_ENCODER, load_engine

    out = tmp_path / "run"
    assert main(["finetune", "--out", str(out), "--rate", "2x2x2", "--world", "story", "--recent-frames", "1",
                 "--predict-change", "--anchor-noise", "0.5", "--unroll", "2", "--steps", "1", "--batch", "1",
                 "--history-frames", "8", "--retrieval-mix", "0", "--quiet"]) == 0
    pair = ["--encoder", str(out / "encoder.safetensors"), "--dit", str(out / "dit.safetensors")]
    save_image(np.full((32, 32, 3), 90, np.uint8), tmp_path / "start.png")
    generate = ["generate", "--image", str(tmp_path / "start.png"), "--storyboard", "0s: camera holds", "--seconds",
                "2", *pair, "--out", str(tmp_path / "v.mp4"), "--chunks-dir", str(tmp_path / "c"), "--quiet"]
    assert main(generate) == 0
    printed = capsys.readouterr()
    assert "of 1 sampling step," in printed.out and "warning" not in printed.out + printed.err
    assert main([*generate[:-2], str(tmp_path / "c3"), "--steps", "3", "--quiet"]) == 0
    printed = capsys.readouterr()
    assert "of 3 sampling steps," in printed.out
    assert "warning: steps 3: this encoder was finetuned with its DiT for 1 sampling step a chunk" in printed.out
    window_steps = load_engine(BASELINE_ENCODER, BASELINE_DIT).sampling_steps
    for steps, expected in (([], {"model": 1, "sliding_window": window_steps}),
                            (["--steps", "2"], {"model": 2, "sliding_window": 2})):
        capsys.readouterr()
        assert main(["eval-continuation", *pair, "--videos", "1", "--json", "--quiet", *steps]) == 0
        assert json.loads(capsys.readouterr().out.splitlines()[-1])["settings"]["sampling_steps"] == expected


def test_train_tiny_caps_the_stages_it_is_given_and_ships_the_others():
    from pfp_core.cli import build_parser, recipe_steps
    from pfp_core.training.recipes import RecipeSteps

    args = build_parser().parse_args(["train-tiny", "--out", "runs", "--init-from", "start", "--steps", "7",
                                      "--object-steps", "5", "--object-cooldown-steps", "3", "--camera-steps", "2",
                                      "--long-object-steps", "11", "--long-object-cooldown-steps", "4"])
    assert recipe_steps(args) == RecipeSteps(finetune=7, camera=2, objects=5, object_cooldown=3, long_objects=11,
                                             long_object_cooldown=4)
    shipped = recipe_steps(build_parser().parse_args(["train-tiny", "--out", "runs", "--init-from", "start"]))
    assert shipped == RecipeSteps()
