"""`bench continuation`: the embedded tiny pair against its baselines on held-out story-world videos, in one run.

Writes continuation.{json,md,png} and continuation_frames.png:
- eval-continuation's figures for the model (what `eval-continuation` prints), the same model with generated
  chunks appended as sampled instead of projected back through the VAE (the drift-defence ablation) and, for a
  pair that places its context in the world or follows moving objects, at screen positions (the position
  ablation: no camera path, no object shift);
- a rollout far past the training length (30 s by default, 240 frames) with the colour drift per second of the
  model, the sliding-window baseline and the last given frame repeated;
- teacher-forced object events (pfp_core.bench.object_events): whether each pair moves the objects its captions
  move when given the real past, apart from its drift;
- truth | model | sliding window frames of one video per scene, to look at.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np

from ..training import storyworld
from .continuation import (BASELINES, ContinuationSettings, Generate, baseline_frames, colour_drift, engine_generator,
                           evaluate_continuation, steps_used)
from ..generation.pipeline import BASELINE_DIT, BASELINE_ENCODER, DEFAULT_ENCODER, Engine, load_engine
from ..config import EncoderConfig
from ..model.checkpoint import load_encoder
from .object_events import engine_second, object_event_figures

OBJECT_EVENT_COLUMNS = ("model", "sliding_window", "repeat_last")
ROLLOUT_SEEDS = 500  # held-out seeds of the rollouts start here, past eval-continuation's
ABLATION_NAMES = {"no_projection": "pfp, chunks not projected",
                  "screen_positions": "pfp, screen positions (no camera, no object shift)"}


@dataclass
class ContinuationBench:
    videos: int = 8
    seed: int = 0
    steps: int | None = None  # None: each pair the sampling steps it was finetuned for
    rollout_seconds: int = 30
    rollout_videos: int = 2


def cached(generate: Generate) -> Generate:
    """The same continuation once per (scene, seed, length), so every row shares the baseline's frames."""
    done: dict[tuple, np.ndarray] = {}

    def run(video: storyworld.StoryVideo, seed: int) -> np.ndarray:
        key = (video.scene, seed, len(video.frames), video.frames[0].tobytes())
        if key not in done:
            done[key] = generate(video, seed)
        return done[key]

    return run


def rollout_drift(generators: dict[str, Generate], bench: ContinuationBench, settings: ContinuationSettings) -> dict:
    """Colour drift per second over long rollouts, averaged over videos, for each generator and repeat_last."""
    frames = bench.rollout_seconds * 8
    curves: dict[str, dict[str, list[float]]] = {}
    for scene in storyworld.SCENES:
        per_video: dict[str, list[np.ndarray]] = {name: [] for name in (*generators, "repeat_last")}
        for i in range(bench.rollout_videos):
            video = storyworld.make_story_video(storyworld.story_seed(bench.seed + ROLLOUT_SEEDS + i),
                                                bench.rollout_seconds, scene)
            outputs = {name: generate(video, i) for name, generate in generators.items()}
            outputs["repeat_last"] = baseline_frames(video, settings.given_frames)["repeat_last"]
            for name, generated in outputs.items():
                per_video[name].append(colour_drift(generated, video.frames).reshape(-1, 8).mean(axis=1))
        curves[scene] = {name: np.mean(rows, axis=0).round(3).tolist() for name, rows in per_video.items()}
    return {"seconds": bench.rollout_seconds, "frames": frames, "videos": bench.rollout_videos, "drift": curves}


def example_frames(generators: dict[str, Generate], bench: ContinuationBench) -> np.ndarray:
    """Rows truth | model | sliding window for the first held-out video of each scene, every frame, 3x."""
    from ..video_io import contact_sheet

    sheets = []
    for scene in storyworld.SCENES:
        video = storyworld.make_story_video(storyworld.story_seed(bench.seed), 8, scene)
        rows = [video.frames] + [generate(video, 0) for generate in generators.values()]
        sheets += [contact_sheet(frames, columns=32) for frames in rows] + [np.full((12, 32 * 32 * 3, 3), 255, np.uint8)]
    return np.concatenate(sheets)


def places(config: EncoderConfig) -> bool:
    """The pair reads positions other than the screen's: a camera path or an object shift."""
    return bool(config.camera_speed or config.object_speed)


def ablation_settings(settings: ContinuationSettings, placed: bool) -> dict[str, ContinuationSettings]:
    """The ablations the bench measures: chunks appended unprojected, and for a pair that records a camera or an
    object speed (`placed`), screen positions."""
    changed = {"no_projection": replace(settings, project_chunks=False)}
    if placed:
        changed["screen_positions"] = replace(settings, placed_positions=False)
    return changed


def progress_total(bench: ContinuationBench) -> int:
    """Progress ticks of run_bench for the embedded pair: one per video and scene of every evaluation, one per
    video of the object events, one for the rollouts."""
    evaluations = 1 + len(ablation_settings(ContinuationSettings(), places(load_encoder(DEFAULT_ENCODER).config)))
    return evaluations * 2 * bench.videos + bench.videos + 1


def ablation(model: Engine, window: Generate, settings: ContinuationSettings,
             progress: Callable[[str], None]) -> dict[str, dict[str, float]]:
    """The model's figures per scene under changed settings (its baselines are those of the main run)."""
    report = evaluate_continuation(engine_generator(model, settings), window, settings, progress)
    return {scene: report["scenes"][scene]["model"] for scene in storyworld.SCENES}


def run_bench(bench: ContinuationBench, progress: Callable[[str], None] = lambda text: None) -> tuple[dict, np.ndarray]:
    settings = ContinuationSettings(videos=bench.videos, seed=bench.seed, steps=bench.steps)
    model, baseline = load_engine(), load_engine(BASELINE_ENCODER, BASELINE_DIT)
    window = cached(engine_generator(baseline, settings))
    main = cached(engine_generator(model, settings))
    report = {"bench": vars(bench).copy(), "model": evaluate_continuation(main, window, settings, progress)}
    report["bench"]["sampling_steps"] = steps_used(settings, model, baseline)
    report["ablations"] = {name: ablation(model, window, changed, progress) for name, changed in
                           ablation_settings(settings, places(model.encoder.config)).items()}
    report["object_events"] = object_event_figures(
        {"model": engine_second(model, bench.steps), "sliding_window": engine_second(baseline, bench.steps)},
        bench.videos, bench.seed, progress)
    long_settings = replace(settings, total_frames=bench.rollout_seconds * 8)
    long_runs = {"model": engine_generator(model, long_settings),
                 "sliding_window": engine_generator(baseline, long_settings)}
    progress("rollouts")
    report["rollout"] = rollout_drift(long_runs, bench, settings)
    return report, example_frames({"model": main, "sliding_window": window}, bench)


def markdown(report: dict, command: str) -> str:
    model = report["model"]
    lines = ["# Continuation of held-out story-world videos", "", f"Command: `{command}`", "",
             "The model gets the first 8 frames (1 s) and generates to 64 frames, one chunk a second, from the "
             "video's own storyboard. PSNRs pool the squared error over the frames and pixels in question, per "
             "video; figures are means over videos. Drift: distance of mean colours in 8-bit levels.", "",
             "Euler steps per chunk, each pair the steps it was finetuned for: " + ", ".join(
                 f"{name} {steps}" for name, steps in report["bench"]["sampling_steps"].items()) + ".", ""]
    for scene, figures in model["scenes"].items():
        ablations = {ABLATION_NAMES[name]: rows[scene] for name, rows in report["ablations"].items()}
        rows = {"pfp (embedded)": figures["model"], **ablations,
                **{name: figures["baselines"][name] for name in BASELINES}}
        columns = list(figures["model"])
        lines += [f"## {scene}", "", "| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
        lines += [f"| {name} | " + " | ".join(f"{row[c]:.2f}" for c in columns) + " |" for name, row in rows.items()]
        lines.append("")
    board = model["storyboard"]
    lines += ["## Storyboard", "", f"Adherence {board['adherence']:.3f}, shuffled control {board['shuffled_control']:.3f} "
              f"({board['segments']} generated seconds of panning videos).", "", "## Targets", "",
              "| target | value | threshold | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {t['value']} | {t['relation']} {t['threshold']} | {'yes' if t['met'] else '**no**'} |"
              for name, t in model["targets"].items()]
    lines += ["", "## Object events, teacher-forced", "",
              "The real frames before each second whose caption makes an object leave or come back, then that second "
              "generated; PSNR on where the object is or was a frame before, pooled over the events.", "",
              "| event | events | " + " | ".join(OBJECT_EVENT_COLUMNS) + " |", "|---" * (len(OBJECT_EVENT_COLUMNS) + 2) + "|"]
    lines += [f"| {kind.replace('_', ' ')} | {row['events']} | " + " | ".join(f"{row[c]:.2f}" for c in OBJECT_EVENT_COLUMNS)
              + " |" for kind, row in report["object_events"].items()]
    rollout = report["rollout"]
    lines += ["", f"## Drift over a {rollout['seconds']} s rollout ({rollout['videos']} videos per scene)", "",
              "| scene | generator | 1 s | 8 s | last second |", "|---|---|---|---|---|"]
    for scene, curves in rollout["drift"].items():
        lines += [f"| {scene} | {name} | {curve[1]:.1f} | {curve[7]:.1f} | {curve[-1]:.1f} |"
                  for name, curve in curves.items()]
    return "\n".join(lines) + "\n"


def figure(report: dict) -> np.ndarray:
    from .plot import bar_chart, canvas, line_chart

    img = canvas(820, 1300)
    for col, (scene, curves) in enumerate(report["rollout"]["drift"].items()):
        series = [(name, list(range(1, len(curve))), curve[1:]) for name, curve in curves.items()]
        line_chart(img, (60 + col * 640, 30, 560, 360), series, f"{scene}: colour drift over the rollout",
                   "second", "levels")
    for col, (scene, figures) in enumerate(report["model"]["scenes"].items()):
        names = ["model", *BASELINES]
        values = [figures["model"]["psnr"]] + [figures["baselines"][n]["psnr"] for n in BASELINES]
        bar_chart(img, (60 + col * 640, 430, 560, 360), names, [("psnr (dB)", values)], f"{scene}: PSNR of 7 s generated",
                  "dB", "{:.1f}")
    return img


def write(report: dict, frames: np.ndarray, out: Path, command: str) -> None:
    from .speed import write_report
    from ..video_io import save_image

    write_report(out, "continuation", report, markdown(report, command), figure(report))
    save_image(frames, out / "continuation_frames.png")
