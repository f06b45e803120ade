"""FSDP2 (--fsdp) under torchrun with two real gloo CPU processes: the same loss curve as DDP, one gathered
checkpoint that the normal loaders read, and a resume from it, sharded or in a single process.

Run as a script, this file is the worker torchrun starts: `test_fsdp.py MODE OUT STEPS` trains the tiny models
through pfp_core.training.loop's own functions (MODE ddp or fsdp) and writes rank 0's losses.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfp_core.training import distributed
from pfp_core.model.checkpoint import load_dit, load_encoder, read_safetensors
from pfp_core.training.distributed import Process
from pfp_core.training.loop import TrainSettings, prepare, run_steps

REPO = Path(__file__).resolve().parents[2]


def settings_for(out: Path, steps: int, fsdp: bool) -> TrainSettings:
    """A finetune of the tiny pair with retrieval steps mixed in, so both losses and the encoder run; the FSDP run
    also recomputes activations (gradient checkpointing), which must not change a single loss."""
    return TrainSettings(stage="finetune", out=out, steps=steps, batch=2, history_frames=(8,), chunk_frames=4,
                         retrieval_mix=0.5, targets=2, bf16=False, checkpoint_every=steps, warmup=1, lr=3e-3,
                         device="cpu", fsdp=fsdp, grad_checkpointing=fsdp)


def worker(mode: str, out: Path, steps: int) -> None:
    process = distributed.start("cpu")
    run = prepare(settings_for(out, steps, mode == "fsdp"), process, progress=False)
    sharded = distributed.is_sharded(run.models)
    losses = run_steps(run, settings_for(out, steps, mode == "fsdp"), process, progress=False)
    if process.is_main:
        report = {"world": process.world, "sharded": sharded, "first_step": run.first_step, "losses": losses}
        (out / f"{mode}_{steps}.json").write_text(json.dumps(report))
    distributed.stop(process)


def torchrun(mode: str, out: Path, steps: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             __file__, mode, str(out), str(steps)], env=env, capture_output=True, text=True,
                            timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    return json.loads((out / f"{mode}_{steps}.json").read_text())


def test_fsdp_matches_ddp_writes_one_checkpoint_and_resumes(tmp_path):
    ddp = torchrun("ddp", tmp_path / "ddp", 4)
    first = torchrun("fsdp", tmp_path / "fsdp", 2)  # stops after 2 steps with a checkpoint ...
    resumed = torchrun("fsdp", tmp_path / "fsdp", 4)  # ... which the next sharded run continues from
    assert first["sharded"] and first["world"] == 2 and not ddp["sharded"]
    assert resumed["first_step"] == 2
    assert first["losses"] + resumed["losses"] == pytest.approx(ddp["losses"], rel=1e-4)

    files = sorted(path.name for path in (tmp_path / "fsdp").iterdir() if path.suffix == ".safetensors")
    assert files == ["dit.safetensors", "encoder.safetensors", "optimizer.safetensors"]  # whole files, no shards
    for name in files:
        sharded, sharded_meta = read_safetensors(tmp_path / "fsdp" / name, name)
        replicated, replicated_meta = read_safetensors(tmp_path / "ddp" / name, name)
        assert sharded.keys() == replicated.keys() and sharded_meta.keys() == replicated_meta.keys()
        assert all(sharded[k].shape == replicated[k].shape for k in sharded)
        assert all(torch.allclose(sharded[k], replicated[k], atol=1e-4) for k in sharded)
    dit = load_dit(tmp_path / "fsdp" / "dit.safetensors")  # the normal loaders, in this single process
    encoder = load_encoder(tmp_path / "fsdp" / "encoder.safetensors")
    assert dit.config.name == "tiny" and encoder.config.compresses

    single = prepare(settings_for(tmp_path / "fsdp", 5, fsdp=False), Process(0, 1, torch.device("cpu")), False)
    assert single.first_step == 4  # one process resumes the sharded run's checkpoint, optimizer state included
    assert all(torch.equal(p, dit.state_dict()[k]) for k, p in single.models.dit.state_dict().items())
    saved, _ = read_safetensors(tmp_path / "fsdp" / "optimizer.safetensors", "optimizer")
    state = single.optimizer.state_dict()["state"]
    assert len(state) == len(single.models.trainable())
    for name, value in saved.items():  # "index.key", as a single process saves it
        index, key = name.split(".", 1)
        assert torch.equal(state[int(index)][key], value)


def test_fsdp_flag_errors_are_one_line_and_name_the_fix(tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(ValueError, match=r"^fsdp: shards the model over torchrun's processes, but this is one "
                                         r"process; launch with `python -m torch.distributed.run"):
        TrainSettings(stage="finetune", out=tmp_path, fsdp=True)
    with pytest.raises(ValueError, match=r"^fsdp: shards a full finetune; .* drop --fsdp .* or drop --lora-rank$"):
        TrainSettings(stage="finetune", out=tmp_path, fsdp=True, lora_rank=8)
    with pytest.raises(ValueError, match=r"^fsdp: the clean context stream .* drop --clean-context or --fsdp$"):
        TrainSettings(stage="finetune", out=tmp_path, fsdp=True, clean_context=True)
    result = subprocess.run([sys.executable, "-m", "pfp_core", "finetune", "--out", str(tmp_path / "run"), "--fsdp",
                             "--steps", "1"], env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
                            text=True, timeout=900, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.startswith("error: fsdp: ") and result.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()


if __name__ == "__main__":
    worker(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))
