"""Continuation evaluation (`eval-continuation`): does a model hold the scene and follow the storyboard?

Held-out story-world videos (pfp_core/training/storyworld.py) of two scenes: `static` (objects leave and come back) and
`panning` (the camera pans away and comes back). The model gets the first 8 frames and generates the rest (to 64
frames at 8 fps, chunk by chunk) from the video's own storyboard; the generated frames are scored against the
real ones, beside simple baselines and the sliding-window model on the same frames:
- psnr: PSNR of the generated frames (squared error pooled over them); psnr_background: the same outside the
  objects;
- drift: distance between the generated and the real mean colour, in 8-bit levels (mean over generated frames;
  drift_chunk1 over the first generated chunk, drift_final at the last frame);
- psnr_reentry (static): PSNR over the pixels of objects that came back, from the frame they start coming back;
- psnr_return (panning): PSNR of the frames where the camera is back on its start view.
Each figure is computed per video, then averaged over the videos.
Storyboard adherence: the camera motion of each generated second, estimated from the generated frames alone by
phase correlation, against the motion the storyboard asks for; the shuffled control compares the same estimates
with the storyboard's segments shuffled, so that a model that ignores the storyboard scores low.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np
import torch

from ..training import storyworld
from .evaluation import nan_mean
from ..generation.generator import AutoregressiveGenerator, GenerationRequest
from .metrics import MIN_MSE
from ..generation.pipeline import Engine, FlowChunkSampler, SamplerSettings
from ..training.procedural import to_pixels
from ..generation.storyboard import parse_storyboard, plan_chunks

BASELINES = ("repeat_last", "mean_given", "repeat_first", "sliding_window")
MOTION_THRESHOLD = 1.0  # px per frame: a pan moves 4 px per frame at 32 px and 8 fps, noise well under 1


@dataclass
class ContinuationSettings:
    videos: int = 8
    seed: int = 0
    given_frames: int = 8
    total_frames: int = 64
    steps: int | None = None  # sampling steps per chunk; None: each pair the steps it was finetuned for
    shift: float = 1.0  # sampling schedule shift
    history_seconds: float = 20.0
    project_chunks: bool = True
    # False: screen positions whatever the pair records (no camera path, no object shift: the position ablation)
    placed_positions: bool = True

    def __post_init__(self) -> None:
        if self.seed < 0:
            raise ValueError(f"seed: must be 0 or a positive whole number, got {self.seed}")
        if not 0 < self.given_frames < self.total_frames:
            raise ValueError(f"given_frames: must be between 1 and total_frames - 1, got {self.given_frames}")


def continue_video(engine: Engine, video: storyworld.StoryVideo, settings: ContinuationSettings, seed: int,
                   storyboard: str | None = None) -> np.ndarray:
    """uint8 [T, H, W, 3]: the video's first frames, then the model's continuation of them in chunks of the length
    the pair was finetuned for."""
    fps = video.fps
    chunk_frames = engine.chunk_frames
    parsed = parse_storyboard(storyboard or video.storyboard)
    plan = plan_chunks(parsed, settings.total_frames / fps, chunk_frames / fps)
    steps, config = engine.steps_for(settings.steps), engine.encoder.config
    request = GenerationRequest(to_pixels(video.frames[None, :settings.given_frames]), [c.prompt for c in plan],
                                settings.total_frames, chunk_frames, round(settings.history_seconds * fps), seed,
                                steps, config.latent_stride[0], settings.project_chunks,
                                camera_speed=config.camera_speed if settings.placed_positions else 0.0,
                                object_speed=config.object_speed if settings.placed_positions else 0.0)
    sampler = FlowChunkSampler(engine.dit, engine.text_encoder, SamplerSettings(steps=steps, shift=settings.shift))
    with torch.no_grad():
        return AutoregressiveGenerator(engine.memory_updater(), sampler, engine.vae).run(request).frames.numpy()


def baseline_frames(video: storyworld.StoryVideo, given: int) -> dict[str, np.ndarray]:
    """The frame-copying baselines, each a whole video of the real video's length."""
    frames = video.frames
    hold = lambda frame: np.concatenate([frames[:given], np.repeat(frame[None], len(frames) - given, axis=0)])
    mean = np.rint(frames[:given].astype(np.float64).mean(axis=0)).astype(np.uint8)
    return {"repeat_last": hold(frames[given - 1]), "mean_given": hold(mean), "repeat_first": hold(frames[0])}


def colour_drift(generated: np.ndarray, real: np.ndarray) -> np.ndarray:
    """Per frame: distance between mean colours, in 8-bit levels."""
    means = lambda frames: frames.reshape(len(frames), -1, 3).astype(np.float64).mean(axis=1)
    return np.linalg.norm(means(generated) - means(real), axis=1)


def pooled_psnr(generated: np.ndarray, real: np.ndarray, mask: np.ndarray) -> float:
    """PSNR of the mean squared error over all pixels where mask [T, H, W] is set (NaN if none), in the engine's
    [-1, 1] range with the MSE floor of pfp_core.bench.metrics."""
    if not mask.any():
        return float("nan")
    diff = (generated.astype(np.float64) - real.astype(np.float64)) / 127.5
    mse = max(float(np.square(diff)[mask].mean()), MIN_MSE)
    return float(10 * np.log10(4.0 / mse))


def reentry_mask(video: storyworld.StoryVideo, given: int) -> np.ndarray:
    """bool [T, H, W]: the pixels of each object that came back, from the frame it starts coming back."""
    mask = np.zeros(video.frames.shape[:3], bool)
    for start, index in video.returns:
        if start >= given:
            mask[start:] |= video.object_masks[index, start:]
    return mask


def scene_figures(generated: np.ndarray, video: storyworld.StoryVideo, given: int) -> dict[str, float]:
    """The figures of one continuation, over its generated frames only. PSNRs pool the squared error over the
    frames and pixels in question (a mean of per-frame PSNRs would be ruled by the few frames copied exactly)."""
    generated_frames = np.zeros(video.frames.shape[:3], bool)
    generated_frames[given:] = True
    score = lambda mask: pooled_psnr(generated, video.frames, mask & generated_frames)
    drift = colour_drift(generated[given:], video.frames[given:])
    figures = {"psnr": score(generated_frames), "psnr_background": score(~video.any_object()),
               "drift": float(drift.mean()), "drift_chunk1": float(drift[:video.fps].mean()), "drift_final": float(drift[-1])}
    if video.scene == "static":
        figures["psnr_reentry"] = score(reentry_mask(video, given))
    else:
        figures["psnr_return"] = score(np.broadcast_to(video.camera_returned()[:, None, None], generated_frames.shape))
    return figures


def camera_motion(frames: np.ndarray) -> float:
    """Mean horizontal camera speed over consecutive frames, in px per frame (positive: the camera pans right,
    so the picture moves left), by phase correlation of the grayscale frames."""
    gray = [cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64) for frame in frames]
    window = cv2.createHanningWindow(gray[0].shape[::-1], cv2.CV_64F)
    shifts = [cv2.phaseCorrelate(a, b, window)[0][0] for a, b in zip(gray, gray[1:])]
    return -float(np.mean(shifts))


def direction(speed: float) -> int:
    return 0 if abs(speed) < MOTION_THRESHOLD else int(np.sign(speed))


def segment_motions(frames: np.ndarray, fps: int, given: int) -> list[int]:
    """The camera direction (-1, 0, +1) of each generated second, from frames alone (with the frame before it)."""
    return [direction(camera_motion(frames[start - 1:start + fps])) for start in range(given, len(frames), fps)]


def storyboard_motions(video: storyworld.StoryVideo, given: int) -> list[int]:
    """The direction each generated second's storyboard segment moves the camera."""
    camera = video.camera
    return [int(np.sign(camera[start + video.fps - 1] - camera[start - 1])) for start in range(given, len(camera), video.fps)]


def adherence(estimated: list[list[int]], asked: list[list[int]], seed: int) -> dict[str, float]:
    """Share of segments whose estimated motion is the asked one, and the same against shuffled storyboards."""
    rng = random.Random(seed)
    shuffled = [rng.sample(row, len(row)) for row in asked]
    share = lambda targets: float(np.mean([e == a for est, tgt in zip(estimated, targets) for e, a in zip(est, tgt)]))
    return {"adherence": share(asked), "shuffled_control": share(shuffled),
            "segments": sum(len(row) for row in asked)}


def mean_figures(rows: list[dict[str, float]]) -> dict[str, float]:
    return {key: nan_mean([row[key] for row in rows]) for key in rows[0]}


Generate = Callable[[storyworld.StoryVideo, int], np.ndarray]


def evaluate_continuation(model: Generate, sliding_window: Generate, settings: ContinuationSettings,
                          progress: Callable[[str], None] = lambda text: None) -> dict:
    """Figures for the model and every baseline on the same held-out videos of both scenes."""
    report: dict = {"settings": vars(settings).copy(), "scenes": {}}
    estimated, asked = [], []
    for scene in storyworld.SCENES:
        rows: dict[str, list[dict[str, float]]] = {name: [] for name in ("model", *BASELINES)}
        for i in range(settings.videos):
            video = storyworld.make_story_video(storyworld.story_seed(settings.seed + i), settings.total_frames // 8, scene)
            progress(f"{scene} video {i + 1}/{settings.videos}")
            generated = {"model": model(video, i), "sliding_window": sliding_window(video, i),
                         **baseline_frames(video, settings.given_frames)}
            for name, frames in generated.items():
                rows[name].append(scene_figures(frames, video, settings.given_frames))
            if scene == "panning":
                estimated.append(segment_motions(generated["model"], video.fps, settings.given_frames))
                asked.append(storyboard_motions(video, settings.given_frames))
        report["scenes"][scene] = {"model": mean_figures(rows["model"]),
                                   "baselines": {name: mean_figures(rows[name]) for name in BASELINES}}
    report["storyboard"] = adherence(estimated, asked, settings.seed)
    report["targets"] = targets(report)
    return report


def targets(report: dict) -> dict[str, dict]:
    """Issue 10's targets, each with its figure, its threshold and whether it is met."""
    found = {}
    for scene, figures in report["scenes"].items():
        model, baselines = figures["model"], figures["baselines"]
        best = max(baselines.values(), key=lambda row: row["psnr"])
        found[f"{scene}_psnr_above_every_baseline"] = _target(model["psnr"], best["psnr"], ">")
        found[f"{scene}_drift_final_at_most_2x_chunk1"] = _target(model["drift_final"], 2 * model["drift_chunk1"], "<=")
    window = report["scenes"]
    found["psnr_return_sliding_window_plus_3db"] = _target(
        window["panning"]["model"]["psnr_return"], window["panning"]["baselines"]["sliding_window"]["psnr_return"] + 3, ">=")
    found["psnr_reentry_sliding_window_plus_1db"] = _target(
        window["static"]["model"]["psnr_reentry"], window["static"]["baselines"]["sliding_window"]["psnr_reentry"] + 1, ">=")
    found["adherence_at_least_0.9"] = _target(report["storyboard"]["adherence"], 0.9, ">=")
    found["shuffled_control_at_most_0.5"] = _target(report["storyboard"]["shuffled_control"], 0.5, "<=")
    return found


def _target(value: float, threshold: float, relation: str) -> dict:
    met = {">": value > threshold, ">=": value >= threshold, "<=": value <= threshold}[relation]
    return {"value": round(value, 3), "threshold": round(threshold, 3), "relation": relation, "met": bool(met)}


def format_report(report: dict) -> str:
    """A table per scene (model and baselines), the storyboard figures and every target, met or not."""
    lines = []
    for scene, figures in report["scenes"].items():
        rows = {"model": figures["model"], **figures["baselines"]}
        columns = list(figures["model"])
        lines += [f"{scene}:", "  " + " ".join(f"{c:>15}" for c in ["", *columns])]
        lines += ["  " + " ".join([f"{name:>15}"] + [f"{row[c]:>15.2f}" for c in columns]) for name, row in rows.items()]
    board = report["storyboard"]
    lines.append(f"storyboard: adherence {board['adherence']:.2f}, shuffled control {board['shuffled_control']:.2f} "
                 f"over {board['segments']} segments")
    lines += [f"target {name}: {t['value']} {t['relation']} {t['threshold']}: {'met' if t['met'] else 'NOT met'}"
              for name, t in report["targets"].items()]
    return "\n".join(lines)


def engine_generator(engine: Engine, settings: ContinuationSettings) -> Generate:
    return lambda video, seed: continue_video(engine, video, settings, seed)


def steps_used(settings: ContinuationSettings, model: Engine, sliding_window: Engine) -> dict[str, int]:
    """The sampling steps each pair runs with under `settings`, for the report."""
    return {"model": model.steps_for(settings.steps), "sliding_window": sliding_window.steps_for(settings.steps)}
