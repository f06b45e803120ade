"""Table 2 at small scale (`python -m pfp_core bench table2`): consistency of long autoregressive generation.

Four models, each given the same number of optimisation steps on the same batches (data come from (seed, step)):
- pfp: frame-retrieval pretraining (the Table 1 run of the proposed encoder at 2x2x2), then next-chunk finetuning;
- no_pretrain: the same encoder and DiT trained on next-chunk generation only, for the sum of both budgets;
- sliding_window: no memory; the DiT sees the most recent latents uncompressed (about as many tokens as the
  memory variants' whole context);
- large_patchifier: as pfp, with the FramePack-like encoder.
The memory variants see the context generation uses (pfp_core.model.context): the last `recent_frames` latents
uncompressed beside the memory of the older history, as the embedded pair does.

Each model continues held-out procedural videos from their first second of ground truth, chunk after chunk, and
every generated frame is compared with the ground truth at the same time. Two scenes: a static camera while
objects swing out of view and come back ("re-entry"), and the training distribution's camera that pans away and
returns to the start view ("return"; scored on the frames where the camera is back). Figures: PSNR over the
whole frame, the background and the objects, and colour drift (distance between the mean colours of the
generated and the true frame, in 8-bit levels) against time. A still frame (the last frame of the given second,
repeated) is the reference a model has to beat.
"""
from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch

from ..training import procedural
from ..atomic import write_bytes
from .evaluation import nan_mean
from .table1 import Table1Settings, job_for, run_job
from ..training.recipes import RECENT_FRAMES, SLIDING_WINDOW_FRAMES

VARIANTS = ("no_pretrain", "sliding_window", "pfp", "large_patchifier")  # trained in this order
SCENES = {"re-entry": False, "return": True}  # scene -> moving camera
RATE = "2x2x2"  # the tiny model's: at 32 px, 4x4x2 memory cannot hold a frame (Table 1)
FPS = 8  # the tiny model's


@dataclass(frozen=True)
class Table2Settings:
    pretrain: Table1Settings = field(default_factory=Table1Settings)  # shares the Table 1 runs in the work folder
    finetune_steps: int = 600
    history_frames: tuple[int, ...] = (24, 40, 56)
    chunk_frames: int = 8
    video_frames: int = 64  # 8 s at 8 fps; the history window holds all of it
    prefix_frames: int = 8  # the given first second
    recent_frames: int = RECENT_FRAMES  # memory variants: latents given uncompressed beside the memory
    # 576 tokens at 32 px; the memory variants' recent frames + memory: 560 before the last chunk
    sliding_latents: int = SLIDING_WINDOW_FRAMES
    videos: int = 6  # per scene
    sample_steps: int = 8
    eval_seed: int = 11
    workers: int = 2


@dataclass(frozen=True)
class Table2Job:
    variant: str
    folder: Path
    work: Path
    settings: Table2Settings


def train_variant(job: Table2Job) -> None:
    """Finetune (after the cached Table 1 pretraining) or train from scratch for the same total budget."""
    from ..training.loop import TrainSettings, train

    s = job.settings
    total = s.pretrain.steps + s.finetune_steps
    common = {"stage": "finetune", "out": job.folder, "batch": s.pretrain.batch, "history_frames": s.history_frames,
              "chunk_frames": s.chunk_frames, "lr": s.pretrain.lr, "seed": 0, "retrieval_mix": 0.0, "rate": RATE,
              "checkpoint_every": 200}
    memory = {"recent_frames": s.recent_frames}
    if job.variant in ("pfp", "large_patchifier"):
        encoder = "proposed" if job.variant == "pfp" else "large_patchifier"
        pretrained = job_for(s.pretrain, job.work, encoder, RATE, seed=0)
        run_job(pretrained)
        train(TrainSettings(**common, **memory, steps=s.finetune_steps, init_from=pretrained.folder), progress=False)
    elif job.variant == "no_pretrain":
        train(TrainSettings(**common, **memory, steps=total, variant="proposed"), progress=False)
    else:
        train(TrainSettings(**common, steps=total, use_memory=False, context_window=s.sliding_latents), progress=False)


def generate(folder: Path, video: procedural.ProceduralVideo, settings: Table2Settings, seed: int) -> np.ndarray:
    """The model in `folder` continues the video's first `prefix_frames`: uint8 [T, H, W, 3]."""
    from ..model.checkpoint import load_dit, load_encoder
    from ..generation.generator import AutoregressiveGenerator, GenerationRequest, chunk_spans
    from ..config import encoder_config_for
    from ..model.context import ContextCompressor
    from ..generation.pipeline import FlowChunkSampler, SamplerSettings
    from ..model.text import HashTextEncoder
    from ..model.vae import SpaceToDepthVAE

    dit = load_dit(folder / "dit.safetensors").eval()
    fps = dit.config.fps
    if (folder / "encoder.safetensors").exists():
        encoder = load_encoder(folder / "encoder.safetensors").eval()
        compress, slab = ContextCompressor(encoder.config, torch.no_grad()(encoder), fps), encoder.config.latent_stride[0]
    else:
        window = encoder_config_for(dit.config.name, variant="none", recent_frames=settings.sliding_latents)
        compress, slab = ContextCompressor(window, None, fps), 1
    chunks = chunk_spans(settings.video_frames, settings.prefix_frames, settings.chunk_frames)[-1].index + 1
    request = GenerationRequest(procedural.to_pixels(video.frames[None, :settings.prefix_frames]), [""] * chunks,
                                settings.video_frames, settings.chunk_frames, settings.video_frames, seed,
                                slab_frames=slab)
    sampler = FlowChunkSampler(dit, HashTextEncoder(dit.config.text_dim, dit.config.text_len),
                               SamplerSettings(steps=settings.sample_steps))
    with torch.no_grad():
        return AutoregressiveGenerator(compress, sampler, SpaceToDepthVAE()).run(request).frames.numpy()


def frame_scores(generated: np.ndarray, video: procedural.ProceduralVideo, prefix: int) -> dict[str, list[float]]:
    """Per generated frame (after the prefix): PSNR whole / background / objects, and colour drift."""
    from .continuation import colour_drift
    from .metrics import masked_psnr, psnr

    to_tensor = lambda frames: torch.from_numpy(frames[prefix:]).permute(0, 3, 1, 2).float() / 127.5 - 1
    pred, true = to_tensor(generated), to_tensor(video.frames)
    masks = torch.from_numpy(video.object_masks[prefix:])
    drift = colour_drift(generated[prefix:], video.frames[prefix:])
    return {"psnr": psnr(pred, true).tolist(), "psnr_background": masked_psnr(pred, true, ~masks).tolist(),
            "psnr_object": masked_psnr(pred, true, masks).tolist(), "colour_drift": drift.tolist(),
            "returned": procedural.returned_frames(video.camera)[prefix:].tolist()}


def score_variant(job: Table2Job) -> dict:
    """Train if needed, then generate and score every held-out video of both scenes (cached)."""
    torch.set_num_threads(1)
    result_path = job.folder / "consistency.json"
    if result_path.exists():
        return json.loads(result_path.read_text())
    s = job.settings
    train_variant(job)
    scenes = {}
    for scene, moving in SCENES.items():
        videos = [procedural.make_video(procedural.heldout_seed(s.eval_seed * 10_000 + i), s.video_frames,
                                        moving_camera=moving) for i in range(s.videos)]
        scenes[scene] = [frame_scores(generate(job.folder, video, s, seed=i), video, s.prefix_frames)
                         for i, video in enumerate(videos)]
        scenes[f"{scene}_still"] = [frame_scores(still_frames(video, s.prefix_frames), video, s.prefix_frames)
                                    for video in videos]
    result = {"variant": job.variant, "scenes": scenes}
    write_bytes(result_path, json.dumps(result).encode())
    return result


def still_frames(video: procedural.ProceduralVideo, prefix: int) -> np.ndarray:
    frames = video.frames.copy()
    frames[prefix:] = frames[prefix - 1]
    return frames


def jobs_for(settings: Table2Settings, work: Path) -> list[Table2Job]:
    tag = (f"{RATE}_pre{settings.pretrain.steps}_ft{settings.finetune_steps}_b{settings.pretrain.batch}"
           f"_recent{settings.recent_frames}_window{settings.sliding_latents}")
    return [Table2Job(v, work / f"table2_{tag}" / v, work, settings) for v in VARIANTS]


def run_table2(settings: Table2Settings, out: Path, work: Path, on_done: Callable[[dict], None] = lambda r: None) -> dict:
    results = []
    with ProcessPoolExecutor(settings.workers, mp_context=get_context("spawn")) as pool:
        for result in pool.map(score_variant, jobs_for(settings, work)):
            results.append(result)
            on_done(result)
    report = {"settings": asdict(settings), "rows": summarise(results), "curves": curves(results, settings)}
    write_report(report, out, example_strip(settings, work))
    return report


def summarise(results: list[dict]) -> list[dict]:
    """One row per (scene, model), the still-frame reference included once per scene."""
    rows = []
    for scene in SCENES:
        for name, videos in scene_sources(results, scene):
            pooled = {metric: [v for video in videos for v in video[metric]] for metric in videos[0]}
            row = {"scene": scene, "model": name, **{m: nan_mean(pooled[m]) for m in ("psnr", "psnr_background",
                                                                                    "psnr_object", "colour_drift")}}
            last_third = [v for video in videos for v in video["psnr"][len(video["psnr"]) * 2 // 3:]]
            row["psnr_last_third"] = nan_mean(last_third)
            returned = [b for video in videos for b, flag in zip(video["psnr_background"], video["returned"]) if flag]
            row["psnr_background_returned"] = nan_mean(returned) if scene == "return" else None
            row["per_video_psnr"] = [nan_mean(video["psnr"]) for video in videos]
            rows.append(row)
    return rows


def scene_sources(results: list[dict], scene: str) -> list[tuple[str, list[dict]]]:
    """(model, per-video scores) for every model on `scene`, then the still-frame reference."""
    return [(r["variant"], r["scenes"][scene]) for r in results] + [("still frame", results[0]["scenes"][f"{scene}_still"])]


def per_second(videos: list[dict], metric: str, prefix_frames: int) -> tuple[list[int], list[float]]:
    """Mean over videos and over the frames of each whole second of video (generated frames only)."""
    seconds = [(prefix_frames + i) // FPS for i in range(len(videos[0][metric]))]
    kept = sorted(set(seconds))
    means = [nan_mean([video[metric][i] for video in videos for i, sec in enumerate(seconds) if sec == second])
             for second in kept]
    return kept, means


def curves(results: list[dict], settings: Table2Settings) -> dict:
    """Per scene and model: background PSNR and colour drift per second of generated video."""
    out = {}
    for scene in SCENES:
        for name, videos in scene_sources(results, scene):
            seconds, background = per_second(videos, "psnr_background", settings.prefix_frames)
            out[f"{scene}/{name}"] = {"seconds": seconds, "psnr_background": background,
                                      "colour_drift": per_second(videos, "colour_drift", settings.prefix_frames)[1]}
    return out


def markdown(report: dict) -> str:
    s = report["settings"]
    pre = s["pretrain"]
    total = pre["steps"] + s["finetune_steps"]
    fmt = lambda v: "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.2f}"
    lines = ["# Table 2 at small scale: consistency of long generation", "",
             (f"Every model trained for {total} steps (batch {pre['batch']}, seed 0): pfp and large_patchifier as "
              f"{pre['steps']} retrieval-pretraining + {s['finetune_steps']} next-chunk steps, no_pretrain and "
              f"sliding_window as {total} next-chunk steps. Memory variants see the last {s['recent_frames']} latent "
              f"frames uncompressed beside the memory of the older ones; the sliding window sees the last "
              f"{s['sliding_latents']} latent frames, uncompressed, and nothing older. Each continues "
              f"{s['videos']} held-out videos per scene from their first "
              f"{s['prefix_frames']} frames to {s['video_frames']} frames (8 fps), {s['chunk_frames']}-frame chunks, "
              f"{s['sample_steps']} Euler steps, memory over the whole video."), "",
             "| scene | model | PSNR | PSNR background | PSNR objects | PSNR last third | background after return | colour drift (levels) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        lines.append(f"| {r['scene']} | {r['model']} | {fmt(r['psnr'])} | {fmt(r['psnr_background'])} | "
                     f"{fmt(r['psnr_object'])} | {fmt(r['psnr_last_third'])} | {fmt(r['psnr_background_returned'])} | "
                     f"{fmt(r['colour_drift'])} |")
    return "\n".join(lines + [""])


def plot(report: dict) -> np.ndarray:
    from .plot import canvas, line_chart

    img = canvas(900, 1300)
    for row, scene in enumerate(SCENES):
        series = {name.split("/", 1)[1]: c for name, c in report["curves"].items() if name.startswith(scene + "/")}
        for col, (metric, title) in enumerate((("psnr_background", "background PSNR (dB)"),
                                               ("colour_drift", "colour drift (8-bit levels)"))):
            line_chart(img, (60 + col * 640, 40 + row * 440, 560, 360),
                       [(name, c["seconds"], c[metric]) for name, c in series.items()],
                       f"{scene}: {title} against time", "second of video", title.split(" (")[0])
    return img


def example_strip(settings: Table2Settings, work: Path) -> np.ndarray:
    """Ground truth and each model on the first video of the return scene, one frame per second, labelled."""
    from .plot import canvas, text

    video = procedural.make_video(procedural.heldout_seed(settings.eval_seed * 10_000), settings.video_frames)
    jobs = jobs_for(settings, work)
    rows = [("ground truth", video.frames)] + [(job.variant, generate(job.folder, video, settings, seed=0)) for job in jobs]
    scale, picks = 3, range(0, settings.video_frames, FPS)
    tile = video.frames.shape[1] * scale
    img = canvas(tile * len(rows), 170 + tile * len(picks))
    for r, (name, frames) in enumerate(rows):
        text(img, name.replace("_", " "), (8, r * tile + tile // 2 + 5))
        strip = np.concatenate([frames[t] for t in picks], axis=1)
        img[r * tile:(r + 1) * tile, 170:] = strip.repeat(scale, axis=0).repeat(scale, axis=1)
    return img


def write_report(report: dict, out: Path, strip: np.ndarray) -> None:
    from ..video_io import save_image

    out.mkdir(parents=True, exist_ok=True)
    write_bytes(out / "table2.json", json.dumps(report, indent=1).encode())
    write_bytes(out / "table2.md", markdown(report).encode())
    save_image(plot(report), out / "table2.png")
    save_image(strip, out / "table2_frames.png")


def quick(settings: Table2Settings) -> Table2Settings:
    """A seconds-long configuration for tests: same code, tiny budgets."""
    from .table1 import quick as quick_table1

    return replace(settings, pretrain=quick_table1(settings.pretrain), finetune_steps=2, history_frames=(8,),
                   video_frames=24, videos=1, sample_steps=1, workers=1)
