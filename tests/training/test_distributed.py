"""Two real processes under torchrun (gloo on CPU) train the tiny models in step.

Run as a script, this file is the worker torchrun starts: it trains through pfp_core.training.loop's own functions,
then saves what its rank ends with, so the test can compare the ranks.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pfp_core.training import distributed, procedural
from pfp_core.atomic import save_tensors
from pfp_core.model.checkpoint import read_safetensors
from pfp_core.training.loop import TrainSettings, prepare, retrieval_loss, run_steps
from pfp_core.model.vae import SpaceToDepthVAE

REPO = Path(__file__).resolve().parents[2]
STEPS = 8


def settings_for(out: Path) -> TrainSettings:
    return TrainSettings(stage="pretrain", out=out, steps=STEPS, batch=2, history_frames=(8,), targets=2,
                         bf16=False, checkpoint_every=STEPS, warmup=1, lr=3e-3, device="cpu")


def heldout_loss(models, settings) -> float:
    latents = SpaceToDepthVAE().encode(procedural.video_batch([procedural.heldout_seed(i) for i in range(4)], 8))
    with torch.no_grad():
        return retrieval_loss(models, latents, settings, torch.Generator().manual_seed(0)).item()


def worker(out: Path) -> None:
    process = distributed.start("cpu")
    settings = settings_for(out)
    run = prepare(settings, process)
    before = heldout_loss(run.models, settings)
    losses = run_steps(run, settings, process, progress=False)
    save_tensors(run.models.state_dict(), out / f"rank{process.rank}.safetensors")
    report = {"world": process.world, "losses": losses, "before": before, "after": heldout_loss(run.models, settings)}
    (out / f"rank{process.rank}.json").write_text(json.dumps(report))
    distributed.stop(process)


def test_two_gloo_processes_train_in_step_and_only_rank_0_writes(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                             __file__, str(tmp_path)], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert rank0["world"] == rank1["world"] == 2
    assert rank0["losses"] == rank1["losses"]  # each step's loss is averaged over both ranks' batches
    assert rank0["after"] < 0.9 * rank0["before"]  # loss on held-out videos went down
    weights0, _ = read_safetensors(tmp_path / "rank0.safetensors", "rank0")
    weights1, _ = read_safetensors(tmp_path / "rank1.safetensors", "rank1")
    assert weights0.keys() == weights1.keys()
    assert all(torch.equal(weights0[k], weights1[k]) for k in weights0)  # DDP kept the ranks identical
    saved, metadata = read_safetensors(tmp_path / "dit.safetensors", "dit")
    assert metadata["step"] == str(STEPS - 1)
    assert all(torch.equal(saved[k], weights0[f"dit.{k}"]) for k in saved)
    assert len((tmp_path / "loss.jsonl").read_text().splitlines()) == STEPS  # written once, by rank 0


def test_cuda_asked_for_without_a_gpu_is_one_line():
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ValueError, match="^device: cuda was asked for but this torch sees no GPU"):
        distributed.pick_device("cuda", 0)
    assert distributed.pick_device("auto", 0) == torch.device("cpu")


if __name__ == "__main__":
    worker(Path(sys.argv[1]))
