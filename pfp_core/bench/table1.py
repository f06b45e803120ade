"""Table 1 at small scale (`python -m pfp_core bench table1`): frame retrieval by encoder variant and rate.

The rows are the paper's (the four variants at 4x4x2, the proposed encoder at 2x2x2 and 2x2x1) plus the large
patchifier at 2x2x2: on 32-px frames 4x4x2 leaves 2x2 memory tokens per slab, too few to hold a frame, so the
FramePack-like encoder is also compared at the tiny model's own rate (`--all-rates` crosses every variant with
every rate). Every run gets the same number of optimisation steps, the same batches
(data are drawn from (seed, step)) and, for one seed, the same initial DiT weights; runs differ only in the
encoder. Each trained pair is scored on the same held-out procedural frames: sampled and one-step (conditional
mean) PSNR, SSIM, and PSNR over moving objects and over the background separately. Runs are cached in the work
folder, so an interrupted bench resumes where it stopped.
"""
from __future__ import annotations

import json
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ..atomic import write_bytes
from ..config import MEMORY_VARIANTS

PAPER_ROWS = [("large_patchifier", "4x4x2"), ("only_lr", "4x4x2"), ("without_lr", "4x4x2"), ("proposed", "4x4x2"),
              ("proposed", "2x2x2"), ("proposed", "2x2x1")]
TINY_RATE_ROWS = [("large_patchifier", "2x2x2")]
PAPER_PSNR = {("large_patchifier", "4x4x2"): 12.93, ("only_lr", "4x4x2"): 15.21, ("without_lr", "4x4x2"): 15.73,
              ("proposed", "4x4x2"): 17.41, ("proposed", "2x2x2"): 19.12, ("proposed", "2x2x1"): 20.19}
METRICS = ("psnr", "psnr_one_step", "ssim", "psnr_object", "psnr_background", "psnr_object_one_step")


@dataclass(frozen=True)
class Table1Settings:
    steps: int = 600
    seeds: tuple[int, ...] = (0, 1, 2)
    all_rates: bool = False
    batch: int = 4
    history_frames: int = 32
    lr: float = 1e-3
    eval_videos: int = 16  # x eval_targets = frames scored per run
    eval_targets: int = 16
    eval_steps: int = 8
    eval_seed: int = 7  # the same held-out frames for every run
    workers: int = 2  # training processes in parallel, one thread each

    def rows(self) -> list[tuple[str, str]]:
        if not self.all_rates:
            return PAPER_ROWS[:4] + TINY_RATE_ROWS + PAPER_ROWS[4:]
        return [(variant, rate) for rate in ("4x4x2", "2x2x2", "2x2x1") for variant in MEMORY_VARIANTS]


@dataclass(frozen=True)
class Job:
    variant: str
    rate: str
    seed: int
    folder: Path
    settings: Table1Settings


def run_job(job: Job) -> dict:
    """Train (or resume) one run, then score it; the score is cached next to the checkpoint."""
    from ..model.checkpoint import load_dit, load_encoder
    from .evaluation import RetrievalSettings, evaluate_retrieval
    from ..training.loop import TrainSettings, train

    torch.set_num_threads(1)
    s = job.settings
    result_path = job.folder / "retrieval.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    train(TrainSettings(stage="pretrain", out=job.folder, steps=s.steps, batch=s.batch, history_frames=(s.history_frames,),
                        lr=s.lr, seed=job.seed, rate=job.rate, variant=job.variant, checkpoint_every=s.steps),
          progress=False)
    evaluation = RetrievalSettings(videos=s.eval_videos, seed=s.eval_seed, history_frames=s.history_frames,
                                   targets=s.eval_targets, steps=s.eval_steps)
    figures, _ = evaluate_retrieval(load_dit(job.folder / "dit.safetensors").eval(),
                                    load_encoder(job.folder / "encoder.safetensors").eval(), evaluation, example_videos=0)
    result = {**figures, "variant": job.variant, "rate": job.rate, "seed": job.seed, "eval_seed": s.eval_seed,
              "steps": s.steps}
    write_bytes(result_path, json.dumps(result, indent=1).encode())
    return result


def job_for(settings: Table1Settings, work: Path, variant: str, rate: str, seed: int) -> Job:
    """Runs live under a folder named by the training budget, so changed settings never reuse stale runs."""
    tag = f"steps{settings.steps}_b{settings.batch}_h{settings.history_frames}"
    return Job(variant, rate, seed, work / f"table1_{tag}" / f"{variant}_{rate}_seed{seed}", settings)


def jobs_for(settings: Table1Settings, work: Path) -> list[Job]:
    return [job_for(settings, work, variant, rate, seed) for seed in settings.seeds for variant, rate in settings.rows()]


def run_table1(settings: Table1Settings, out: Path, work: Path, on_done: Callable[[dict], None] = lambda r: None) -> dict:
    jobs = jobs_for(settings, work)
    results = []
    with ProcessPoolExecutor(settings.workers, mp_context=get_context("spawn")) as pool:
        for result in pool.map(run_job, jobs):
            results.append(result)
            on_done(result)
    report = {"settings": asdict(settings), "rows": summarise(results, settings), "runs": results}
    write_report(report, out)
    return report


def summarise(results: list[dict], settings: Table1Settings) -> list[dict]:
    """Mean and spread over seeds for each (variant, rate) row, with the paper's PSNR beside it."""
    rows = []
    for variant, rate in settings.rows():
        runs = [r for r in results if r["variant"] == variant and r["rate"] == rate]
        row = {"variant": variant, "rate": rate, "seeds": len(runs), "paper_psnr": PAPER_PSNR.get((variant, rate))}
        for metric in METRICS:
            values = [r[metric] for r in runs]
            row[metric] = round(statistics.mean(values), 3)
            row[f"{metric}_sd"] = round(statistics.stdev(values), 3) if len(values) > 1 else 0.0
        for metric in ("psnr", "psnr_object"):  # the reference each bar in the plot is measured from
            row[f"mean_frame_{metric}"] = round(statistics.mean(r["baselines"]["mean_frame"][metric] for r in runs), 3)
        rows.append(row)
    return rows


def markdown(report: dict) -> str:
    s = report["settings"]
    head = ("| encoder | rate | PSNR sampled | PSNR one-step | SSIM | PSNR objects | PSNR background | paper PSNR |\n"
            "| --- | --- | --- | --- | --- | --- | --- | --- |")
    cell = lambda row, m: f"{row[m]:.2f} ± {row[m + '_sd']:.2f}" if m != "ssim" else f"{row[m]:.3f} ± {row[m + '_sd']:.3f}"
    lines = [f"| {r['variant']} | {r['rate']} | {cell(r, 'psnr')} | {cell(r, 'psnr_one_step')} | {cell(r, 'ssim')} | "
             f"{cell(r, 'psnr_object')} | {cell(r, 'psnr_background')} | {r['paper_psnr'] or '-'} |" for r in report["rows"]]
    frames = s["eval_videos"] * s["eval_targets"]
    return "\n".join([
        "# Table 1 at small scale: frame retrieval by encoder", "",
        f"Each row: pretrained for frame retrieval for {s['steps']} steps (batch {s['batch']}, {s['history_frames']}-frame "
        f"histories, lr {s['lr']}), seeds {', '.join(map(str, s['seeds']))}; mean ± standard deviation over seeds. "
        f"Scored on the same {frames} held-out frames ({s['eval_videos']} videos x {s['eval_targets']} frames, "
        f"{s['eval_steps']} sampling steps). Mean-frame baseline: {report['rows'][0]['mean_frame_psnr']:.2f} dB.", "",
        head, *lines, ""])


def plot(report: dict) -> np.ndarray:
    from .plot import bar_chart, canvas

    img = canvas(520, 1100)
    rows = report["rows"]
    groups = [f"{r['variant'].replace('_', ' ')} {r['rate']}" for r in rows]
    series = [(name, [r[metric] for r in rows]) for name, metric in
              (("sampled", "psnr"), ("one-step", "psnr_one_step"), ("objects, one-step", "psnr_object_one_step"))]
    bar_chart(img, (70, 40, 1000, 420), groups, series, f"Retrieval PSNR (dB), mean over seeds; the video's mean "
              f"frame scores {rows[0]['mean_frame_psnr']:.2f} (objects {rows[0]['mean_frame_psnr_object']:.2f})",
              "dB", "{:.1f}")
    return img


def write_report(report: dict, out: Path) -> None:
    from ..video_io import save_image

    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "table1.json", json.dumps(report, indent=1).encode())
    write_bytes(out / "table1.md", markdown(report).encode())
    save_image(plot(report), out / "table1.png")


def quick(settings: Table1Settings) -> Table1Settings:
    """A seconds-long configuration for tests: same code, tiny budgets."""
    return replace(settings, steps=2, seeds=(0,), batch=1, history_frames=8, eval_videos=1, eval_targets=2,
                   eval_steps=1, workers=1)
