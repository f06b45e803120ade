"""The recipe of the embedded tiny pair and of its sliding-window baseline, as code, so that one command
(`python -m pfp_core train-tiny --out DIR`) reproduces both and README states nothing the code does not do.

pfp: story-world retrieval pretraining (stage 1) from the previous embedded pair, then next-chunk finetuning
(stage 2) with 2 recent latent frames beside the 2x2x2 memory, context corruption and some retrieval practice.
Sliding window: the same finetuning from the same start, its context the last 9 latent frames alone (576
tokens; pfp's context is at most 560 tokens within eval-continuation's 8 s videos). Every run checkpoints and
resumes, so the recipe can be stopped and continued; `steps` caps the finetuning stages.
"""
from __future__ import annotations

from pathlib import Path

from .loop import TrainSettings

RECENT_FRAMES = 2
SLIDING_WINDOW_FRAMES = 9
FINETUNE_HISTORY = (8, 16, 24, 32, 40, 48, 56)  # whole seconds, so every generated chunk is one storyboard segment


def tiny_recipe(out: Path, init_from: Path, finetune_steps: int = 8000, pretrain_steps: int = 500) -> list[dict]:
    """TrainSettings arguments of pretrain, finetune (pfp) and the baseline's finetune, in the order they run (a
    stage's --init-from folder exists only once the stage before it ran); `init_from` holds the starting
    dit.safetensors and encoder.safetensors."""
    common = dict(world="story", batch=4, lr=5e-4, checkpoint_every=100, rate="2x2x2")
    finetune = dict(stage="finetune", history_frames=FINETUNE_HISTORY, context_noise=0.15, **common)
    return [dict(stage="pretrain", out=out / "pfp_pre", init_from=init_from, steps=pretrain_steps,
                 history_frames=(16, 32, 48, 64), **common),
            dict(out=out / "pfp_ft", init_from=out / "pfp_pre", steps=finetune_steps, recent_frames=RECENT_FRAMES,
                 retrieval_mix=0.2, **finetune),
            dict(out=out / "sw_ft", init_from=init_from, steps=finetune_steps + pretrain_steps, variant="none",
                 recent_frames=SLIDING_WINDOW_FRAMES, retrieval_mix=0.0, **finetune)]


def train_tiny(out: Path, init_from: Path, finetune_steps: int, progress: bool = True, pretrain_steps: int = 500) -> None:
    """Run (or resume) the whole recipe."""
    from .loop import train

    for arguments in tiny_recipe(out, init_from, finetune_steps, pretrain_steps):
        train(TrainSettings(**arguments), progress=progress)
