"""The recipe of the embedded tiny pair and of its sliding-window baseline, as code, so that one command
(`python -m pfp_core train-tiny --out DIR`) reproduces both and README states nothing the code does not do.

pfp: story-world retrieval pretraining (stage 1) from the previous embedded pair, then next-chunk finetuning
(stage 2) with 2 recent latent frames beside the 2x2x2 memory, context corruption and some retrieval practice,
then the change finetune (stage 3): the DiT reads each chunk's change from the last history latent
(EncoderConfig.predict_change), each chunk flowing from that latent plus half-scale noise, without context noise
(it taught the change reading to smooth the last frame) and at shift 3 (more high-noise steps), then the unrolled
finetune (stage 4): each step predicts 3 chunks in a row, each the one-step estimate continuing the model's own
chunks before it, with the loss on all three (TrainSettings.unroll), so the pair samples with one step, then
the same at a fifth of the learning rate (stage 5, the cooldown), then the camera finetune (stage 6): the
cooldown's settings with the context and the chunk placed in the world the captions pan over, each chunk starting
from the last frame moved with the camera (TrainSettings.camera_speed, pfp_core.model.camera), and its cooldown at
a fifth of that learning rate (stage 7), then the object finetune (stage 8): stage 6's settings with a chunk's
tokens following the object its caption makes leave or come back (TrainSettings.object_speed,
pfp_core.model.objects) on another data seed, and its cooldown (stage 9), then the long object finetune (stage 10):
stage 8's settings at twice its learning rate for thousands of steps, with static clips (an object leaves or comes
back in about half of their seconds) twice as often as panning ones, and its cooldown (stage 11).
Sliding window: the same stages 2 to 11 from the same start, its context the last 9 latent frames alone (576
tokens; pfp's context is at most 560 tokens within eval-continuation's 8 s videos). Every run checkpoints and
resumes, so the recipe can be stopped and continued; the step counts cap the stages.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .loop import TrainSettings

RECENT_FRAMES = 2
SLIDING_WINDOW_FRAMES = 9
FINETUNE_HISTORY = (8, 16, 24, 32, 40, 48, 56)  # whole seconds, so every generated chunk is one storyboard segment


CHANGE_STEPS = 2600  # stage 3 of the shipped pair (README: Tiny default)
UNROLL_STEPS = 3000  # stage 4
UNROLL_CHUNKS = 3
UNROLL_HISTORY = (8, 16, 24, 32, 40)  # plus the 3 unrolled chunks: at most 64 frames, eval-continuation's length
COOLDOWN_STEPS = 800  # stage 5
COOLDOWN_LR = 1e-4
CAMERA_STEPS = 1200  # stage 6
CAMERA_SPEED = 1.0  # DiT tokens per frame: the story world pans one view (8 tokens) a second at 8 fps
CAMERA_COOLDOWN_STEPS = 400  # stage 7, the shipped pair
CAMERA_COOLDOWN_LR = 2e-5
OBJECT_STEPS = 1200  # stage 8
OBJECT_SPEED = 1.0  # DiT tokens per frame: a story-world object leaves or comes back one view width a second
OBJECT_COOLDOWN_STEPS = 400  # stage 9
LONG_OBJECT_STEPS = 5000  # stage 10
LONG_OBJECT_LR = 2e-4
# static clips move an object in about half their seconds, panning ones never: two of three clips static
LONG_OBJECT_SCENES = ("static", "static", "panning")
LONG_OBJECT_COOLDOWN_STEPS = 400  # stage 11, the shipped pair


@dataclass(frozen=True)
class RecipeSteps:
    """The step count that caps each stage (default: as shipped)."""
    finetune: int = 8000  # stage 2 of pfp; the sliding window gets `pretrain` more
    pretrain: int = 500
    change: int = CHANGE_STEPS
    unroll: int = UNROLL_STEPS
    cooldown: int = COOLDOWN_STEPS
    camera: int = CAMERA_STEPS
    camera_cooldown: int = CAMERA_COOLDOWN_STEPS
    objects: int = OBJECT_STEPS
    object_cooldown: int = OBJECT_COOLDOWN_STEPS
    long_objects: int = LONG_OBJECT_STEPS
    long_object_cooldown: int = LONG_OBJECT_COOLDOWN_STEPS


def tiny_recipe(out: Path, init_from: Path, steps: RecipeSteps = RecipeSteps()) -> list[dict]:
    """TrainSettings arguments of every stage in the order they run (a stage's --init-from folder exists only
    once the stage before it ran); `init_from` holds the starting dit.safetensors and encoder.safetensors. The
    shipped pair is pfp_long_objects_cooldown, its baseline sw_long_objects_cooldown."""
    # zero-padded captions: the shipped pair was trained before mean padding existed (pfp_core.model.text)
    common = dict(world="story", batch=4, lr=5e-4, checkpoint_every=100, rate="2x2x2", text_padding="zeros")
    finetune = dict(stage="finetune", history_frames=FINETUNE_HISTORY, context_noise=0.15, **common)
    change = dict(finetune, steps=steps.change, predict_change=True, anchor_noise=0.5, context_noise=0.0, shift=3.0,
                  checkpoint_every=200)
    unroll = dict(change, steps=steps.unroll, history_frames=UNROLL_HISTORY, unroll=UNROLL_CHUNKS, checkpoint_every=100)
    # a fifth of the learning rate settles the weights between stage 4's noisy checkpoints; another seed draws
    # other batches than stage 4's first ones
    cooldown = dict(unroll, steps=steps.cooldown, lr=COOLDOWN_LR, seed=1)
    camera = dict(cooldown, steps=steps.camera, camera_speed=CAMERA_SPEED, seed=2)
    # the same data seed as stage 6: it ran so, and drew stage 6's first batches again
    camera_cooldown = dict(camera, steps=steps.camera_cooldown, lr=CAMERA_COOLDOWN_LR)
    objects = dict(camera, steps=steps.objects, object_speed=OBJECT_SPEED, seed=3)
    object_cooldown = dict(objects, steps=steps.object_cooldown, lr=CAMERA_COOLDOWN_LR)
    long_objects = dict(objects, steps=steps.long_objects, lr=LONG_OBJECT_LR, scenes=LONG_OBJECT_SCENES, seed=5)
    long_object_cooldown = dict(long_objects, steps=steps.long_object_cooldown, lr=CAMERA_COOLDOWN_LR)
    pfp = dict(recent_frames=RECENT_FRAMES, retrieval_mix=0.2)
    window = dict(variant="none", recent_frames=SLIDING_WINDOW_FRAMES, retrieval_mix=0.0)
    stages = [dict(stage="pretrain", out=out / "pfp_pre", init_from=init_from, steps=steps.pretrain,
                   history_frames=(16, 32, 48, 64), **common),
              dict(out=out / "pfp_ft", init_from=out / "pfp_pre", steps=steps.finetune, **pfp, **finetune),
              dict(out=out / "sw_ft", init_from=init_from, steps=steps.finetune + steps.pretrain, **window, **finetune)]
    for stage, after, settings in (("change", "ft", change), ("unroll", "change", unroll),
                                   ("cooldown", "unroll", cooldown), ("camera", "cooldown", camera),
                                   ("camera_cooldown", "camera", camera_cooldown),
                                   ("objects", "camera_cooldown", objects),
                                   ("objects_cooldown", "objects", object_cooldown),
                                   ("long_objects", "objects_cooldown", long_objects),
                                   ("long_objects_cooldown", "long_objects", long_object_cooldown)):
        stages += [dict(out=out / f"{kind}_{stage}", init_from=out / f"{kind}_{after}", **context, **settings)
                   for kind, context in (("pfp", pfp), ("sw", window))]
    return stages


def train_tiny(out: Path, init_from: Path, steps: RecipeSteps = RecipeSteps(), progress: bool = True) -> None:
    """Run (or resume) the whole recipe."""
    from .loop import train

    for arguments in tiny_recipe(out, init_from, steps):
        train(TrainSettings(**arguments), progress=progress)
