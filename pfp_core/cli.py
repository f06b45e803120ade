"""Command line: python -m pfp_core {demo, generate, plan, eval-retrieval, pretrain, finetune, export, embed-texts,
queue, bench}."""
from __future__ import annotations

import argparse
import errno
import json
import math
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from tqdm import tqdm

from . import limits
from .errors import GenerationCancelled

if TYPE_CHECKING:  # the training room imports torch; the command line starts without it
    from .training.recipes import RecipeSteps


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on a bad argument; a one-line error that names the flag is enough."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {printable(message)} (see --help)\n")


def printable(text: str) -> str:
    """Control characters (line breaks included) escaped, so text a user typed cannot split an error line."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def progress_callbacks(bar: tqdm):
    from .generation.generator import Callbacks

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return Callbacks(on_progress=on_progress)


def run_generation(args: argparse.Namespace, image: np.ndarray, storyboard: str, out_video: Path, chunks: Path):
    from .generation.pipeline import SamplerSettings, VideoSettings, generate, load_engine, write_result

    engine = load_engine(args.encoder, args.dit)
    video = VideoSettings(seconds=args.seconds, chunk_seconds=args.chunk_seconds or engine.chunk_frames / engine.fps,
                          history_seconds=args.history_seconds, seed=args.seed)
    sampler = SamplerSettings(steps=engine.steps_for(args.steps), cfg=args.cfg, shift=args.shift, solver=args.solver)
    if warning := engine.encoder.config.steps_warning(sampler.steps):
        print(warning)  # stdout: stderr carries the one line of an error, and the run goes on
    started = time.time()
    with tqdm(desc="generate", unit="step", disable=args.quiet) as bar:
        result = generate(engine, image, storyboard, video, sampler, chunks, progress_callbacks(bar), args.global_prompt)
    write_result(result, out_video, engine.fps)
    return result, summary(result, engine.fps, sampler.steps, time.time() - started, out_video)


def summary(result, fps: int, steps: int, seconds_taken: float, out_video: Path) -> str:
    frames = result.frames.shape[0]
    tokens = f"{min(result.memory_tokens)}-{max(result.memory_tokens)}" if result.memory_tokens else "n/a"
    return (f"{frames} frames ({frames / fps:.2f} s at {fps} fps), {len(result.memory_tokens) + result.resumed_chunks} "
            f"chunks ({result.resumed_chunks} resumed) of {steps} sampling step{'s' * (steps > 1)}, memory tokens "
            f"{tokens}, {seconds_taken:.1f} s -> {out_video}")


def cmd_demo(args: argparse.Namespace) -> None:
    from .training.storyworld import demo_video
    from .video_io import contact_sheet, save_image

    out = limits.output_folder(args.out, "out")
    video = demo_video(max(2, int(np.ceil(args.seconds))))
    given = video.frames[:video.fps]  # the first second is given; the rest follows the video's own storyboard
    result, report = run_generation(args, given, video.storyboard, out / "demo.mp4", out / "demo_chunks")
    generated = result.frames.numpy()
    truth = video.frames[:len(generated)]
    gap = np.zeros((6, contact_sheet(truth).shape[1], 3), np.uint8)
    save_image(np.concatenate([contact_sheet(truth), gap, contact_sheet(generated)]), out / "demo_frames.png")
    print(f"demo: storyboard '{video.storyboard}'")
    print("demo: " + report)


def cmd_generate(args: argparse.Namespace) -> None:
    from .generation.storyboard import read_storyboard
    from .video_io import load_image

    out = limits.output_file(args.out, "out")  # checked first: the video is written only after every chunk is made
    if out.suffix.lower() != ".mp4":
        raise ValueError(f"out: '{out.name}' must end in .mp4 (the video is written as mp4)")
    storyboard = read_storyboard(args.storyboard)
    chunks = limits.output_folder(args.chunks_dir or out.with_name(out.stem + "_chunks"), "chunks-dir")
    print("generate: " + run_generation(args, load_image(args.image), storyboard, out, chunks)[1])


def cmd_plan(args: argparse.Namespace) -> None:
    from .planner import format_plan_table, format_training_table, plan, training_plan

    if args.training:
        figures = training_plan(args.model, args.width, args.height, args.fps, args.history_seconds, args.rate,
                                args.chunk_seconds, batch=args.batch or 1, lora_rank=args.lora_rank, gpus=args.gpus)
        print(json.dumps(figures, indent=1) if args.json else format_training_table(figures))
        return
    figures = plan(args.model, args.width, args.height, args.fps, args.history_seconds, args.rate, args.chunk_seconds,
                   video_seconds=args.video_seconds, batch=args.batch or 2, recent_frames=args.recent_frames)
    print(json.dumps(figures, indent=1) if args.json else format_plan_table(figures))


def cmd_eval(args: argparse.Namespace) -> None:
    from .model.checkpoint import load_dit, load_encoder
    from .bench.evaluation import RetrievalSettings, evaluate_retrieval
    from .generation.pipeline import DEFAULT_DIT, DEFAULT_ENCODER

    if args.png:
        limits.output_file(args.png, "png")
    dit = load_dit(args.dit or DEFAULT_DIT)
    encoder = load_encoder(args.encoder or DEFAULT_ENCODER)
    baseline = load_dit(args.no_memory_dit) if args.no_memory_dit else None
    settings = RetrievalSettings(videos=args.videos, seed=args.seed, history_frames=args.history_frames, steps=args.steps)
    result, examples = evaluate_retrieval(dit, encoder, settings, baseline)
    if args.png:
        from .video_io import save_image

        save_image(examples.repeat_interleave(3, 0).repeat_interleave(3, 1).numpy(), args.png)
    print(json.dumps(result, indent=None if args.json else 1))


def cmd_eval_continuation(args: argparse.Namespace) -> None:
    from .bench.continuation import (ContinuationSettings, engine_generator, evaluate_continuation, format_report,
                                     steps_used)
    from .generation.pipeline import BASELINE_DIT, BASELINE_ENCODER, load_engine

    settings = ContinuationSettings(videos=args.videos, seed=args.seed, steps=args.steps, shift=args.shift,
                                    project_chunks=not args.no_projection)
    model = load_engine(args.encoder, args.dit)
    window = load_engine(args.baseline_encoder or BASELINE_ENCODER, args.baseline_dit or BASELINE_DIT)
    with tqdm(total=2 * settings.videos, desc="eval-continuation", disable=args.quiet) as bar:
        report = evaluate_continuation(engine_generator(model, settings), engine_generator(window, settings), settings,
                                       lambda text: bar.update(1))
    report["settings"]["sampling_steps"] = steps_used(settings, model, window)
    if not args.json:
        print(format_report(report))
    print(json.dumps(report))


def cmd_train(args: argparse.Namespace) -> None:
    from .training.distributed import launched_rank
    from .training.loop import TrainSettings, train

    optional_path = lambda text: Path(text) if text else None
    settings = TrainSettings(stage=args.command, out=limits.output_folder(args.out, "out"), steps=args.steps,
                             batch=args.batch, history_frames=tuple(args.history_frames), lr=args.lr, seed=args.seed,
                             use_memory=not args.no_memory, bf16=args.bf16, rate=args.rate,
                             variant=args.variant, checkpoint_every=args.checkpoint_every,
                             retrieval_mix=args.retrieval_mix, context_window=args.context_window,
                             model=args.model or "tiny",
                             init_from=optional_path(args.init_from), dit_init=optional_path(args.dit_init),
                             lora_rank=args.lora_rank, lora_alpha=args.lora_alpha,
                             grad_checkpointing=args.grad_checkpointing, device=args.device,
                             data=optional_path(args.data), text_embeddings=optional_path(args.text_embeddings),
                             world=args.world, scenes=tuple(args.scenes), text_padding=args.text_padding,
                             recent_frames=args.recent_frames, context_noise=args.context_noise,
                             shift=args.shift, clean_context=args.clean_context, fsdp=args.fsdp,
                             anchor_noise=args.anchor_noise, rollout_mix=args.rollout_mix,
                             chunk_frames=args.chunk_frames, predict_change=args.predict_change,
                             camera_speed=args.camera_speed, object_speed=args.object_speed,
                             change_weighting=args.change_weighting, unroll=args.unroll,
                             unroll_mix=args.unroll_mix, distill_from=optional_path(args.distill_from))
    losses = train(settings, progress=not args.quiet)
    if losses and launched_rank() == 0:
        print(f"{args.command}: steps {args.steps}, last loss {losses[-1]:.4f} -> {args.out}")


def recipe_steps(args: argparse.Namespace) -> RecipeSteps:
    """train-tiny's step caps: the stages given on the command line, the shipped counts for the others."""
    from .training.recipes import RecipeSteps

    stages = ("change", "unroll", "cooldown", "camera", "camera_cooldown", "objects", "object_cooldown", "long_objects",
              "long_object_cooldown")
    given = {stage: getattr(args, f"{stage}_steps") for stage in stages if getattr(args, f"{stage}_steps")}
    return RecipeSteps(finetune=args.steps, **given)


def cmd_train_tiny(args: argparse.Namespace) -> None:
    from .training import recipes

    recipes.train_tiny(Path(args.out), Path(args.init_from), recipe_steps(args), progress=not args.quiet)
    print(f"train-tiny: pfp pair in {Path(args.out) / 'pfp_long_objects_cooldown'}, sliding-window baseline in "
          f"{Path(args.out) / 'sw_long_objects_cooldown'}")


def cmd_export(args: argparse.Namespace) -> None:
    from .training.export import DTYPES, export_dit, export_lora

    export = export_lora if args.lora else export_dit
    out = limits.output_file(args.out, "out")
    if out.resolve().parent == Path(args.source).resolve():
        raise ValueError(f"out: {out} is inside the training folder --from; write the export elsewhere, so the "
                         "checkpoint it is made from stays")
    path = export(Path(args.source), out, DTYPES[args.dtype])
    print(f"export: {'LoRA' if args.lora else 'DiT'} ({args.dtype}, {path.stat().st_size / 1e6:,.1f} MB) -> {path}")


def cmd_embed_texts(args: argparse.Namespace) -> None:
    from .config import dit_config
    from .model.text import HashTextEncoder
    from .training.text_embeddings import embed_captions
    from .training.video_dataset import folder_captions

    captions = folder_captions(args.data)
    if not captions:
        raise ValueError(f"--data: no caption files beside the videos in '{args.data}'; write clip.txt next to "
                         "clip.mp4 with lines such as '0s: a woman stands by a shelf'")
    tiny = dit_config("tiny")
    out = embed_captions(captions, HashTextEncoder(tiny.text_dim, tiny.text_len, "zeros"), "hash", tiny.text_len,
                         limits.output_file(args.out, "out"),
                         progress=not args.quiet)
    print(f"embed-texts: {len(captions)} captions and the empty prompt, hash encoder, text_dim {tiny.text_dim} "
          f"-> {out}")


def cmd_queue(args: argparse.Namespace) -> None:
    from .client.queue_client import (format_summary, load_workflow, parse_override, parse_server, plan_jobs, run_jobs,
                                      seed_list)
    from .generation.storyboard import read_storyboard

    if args.seed_start is not None and args.count is None:
        raise ValueError("--seed-start needs --count")
    servers = [parse_server(text) for text in args.server]
    seeds = seed_list(args.seeds, args.count, args.seed_start or 0)
    plan = plan_jobs(load_workflow(Path(args.workflow)), seeds, [read_storyboard(s) for s in args.storyboard],
                     [parse_override(text) for text in args.set])
    print(f"queue: {len(plan.jobs)} jobs on {len(servers)} servers", flush=True)
    for flag, targets in plan.changed.items():
        print(f"  {flag} sets {', '.join(targets)}", flush=True)
    results = run_jobs(plan.jobs, servers, limits.output_folder(args.out, "out"), args.timeout,
                       lambda line: print(line, flush=True))
    print(format_summary(results))
    failed = [result for result in results if result.status != "ok"]
    if failed:
        raise ValueError(f"{len(failed)} of {len(results)} jobs failed; job {failed[0].job.index}: {failed[0].error}")
    print(f"queue: outputs in {args.out}")


def cmd_bench(args: argparse.Namespace) -> None:
    {"speed": bench_stages, "planner": bench_stages, "table1": bench_table1, "table2": bench_table2,
     "continuation": bench_continuation, "gpu": bench_gpu}[args.what](args)


def bench_gpu(args: argparse.Namespace) -> None:
    from .bench.bench_gpu import NO_CUDA, TINY, GpuBench, bench_device, run_gpu_bench, write

    device = bench_device(args.tiny)
    if device is None:
        print(NO_CUDA)
        return
    report = run_gpu_bench(TINY if args.tiny else GpuBench(), device, Path(args.out))
    path = write(report, Path(args.out), "python -m pfp_core bench gpu" + (" --tiny" if args.tiny else ""))
    g, t = report["generation"], report["lora_training_step"]
    print(f"bench gpu: chunk {g['seconds']:.1f} s, peak {g['peak_gb']:.2f} GB (planned {g['planned_gb']:.2f}); LoRA "
          f"step {t['seconds']:.1f} s, peak {t['peak_gb']:.2f} GB (planned {t['planned_gb']:.2f}); attention "
          f"{report['attention']['backend']} -> {path}")


def bench_continuation(args: argparse.Namespace) -> None:
    from .bench.bench_continuation import ContinuationBench, progress_total, run_bench, write

    bench = ContinuationBench(videos=2, rollout_seconds=10, rollout_videos=1) if args.quick else ContinuationBench()
    with tqdm(total=progress_total(bench), desc="bench continuation", disable=args.quiet) as bar:
        report, frames = run_bench(bench, lambda text: bar.update(1))
    command = "python -m pfp_core bench continuation" + (" --quick" if args.quick else "")
    write(report, frames, Path(args.out), command)
    met = sum(t["met"] for t in report["model"]["targets"].values())
    print(f"bench continuation: {met} of {len(report['model']['targets'])} targets met -> "
          f"{Path(args.out) / 'continuation.md'}")


def bench_table2(args: argparse.Namespace) -> None:
    from .bench.table1 import Table1Settings
    from .bench.table2 import Table2Settings, quick, run_table2

    pretrain = Table1Settings(workers=args.workers)
    pretrain = replace(pretrain, steps=args.steps) if args.steps else pretrain
    settings = Table2Settings(pretrain=pretrain, workers=args.workers)
    settings = quick(settings) if args.quick else settings
    with tqdm(total=4, desc="table2 models", unit="model", disable=args.quiet) as bar:
        report = run_table2(settings, Path(args.out), Path(args.work), on_done=lambda result: bar.update())
    best = max((r for r in report["rows"] if r["scene"] == "return"), key=lambda r: r["psnr"])
    print(f"bench table2: best PSNR on the return scene {best['psnr']:.2f} dB ({best['model']}) -> "
          f"{Path(args.out) / 'table2.md'}")


def bench_table1(args: argparse.Namespace) -> None:
    from .bench.table1 import Table1Settings, jobs_for, quick, run_table1

    settings = Table1Settings(seeds=tuple(range(args.seeds or 3)), all_rates=args.all_rates, workers=args.workers)
    settings = quick(settings) if args.quick else settings
    settings = replace(settings, steps=args.steps) if args.steps else settings
    with tqdm(total=len(jobs_for(settings, Path(args.work))), desc="table1 runs", unit="run", disable=args.quiet) as bar:
        report = run_table1(settings, Path(args.out), Path(args.work), on_done=lambda result: bar.update())
    best = max(report["rows"], key=lambda row: row["psnr_one_step"])
    print(f"bench table1: {len(report['runs'])} runs; best one-step PSNR {best['psnr_one_step']:.2f} dB "
          f"({best['variant']} {best['rate']}) -> {Path(args.out) / 'table1.md'}")


def bench_stages(args: argparse.Namespace) -> None:
    if args.what == "planner":
        from .bench.bench_planner import STAGES
        from .bench.bench_planner import run_planner as run
    else:
        from .bench.speed import STAGES
        from .bench.speed import run_speed as run

    with tqdm(total=len(STAGES), desc="bench", unit="stage", disable=args.quiet) as bar:
        def on_stage(stage: str) -> None:
            bar.n = STAGES.index(stage)
            bar.set_description(f"bench: {stage}")

        results = run(Path(args.out), quick=args.quick, on_stage=on_stage)
        bar.n = len(STAGES)
        bar.set_description("bench: done")
    met = sum(v["met"] for v in results["verdicts"])
    print(f"bench {args.what}: {met} of {len(results['verdicts'])} targets met, {results['bench_seconds']:.0f} s -> "
          f"{Path(args.out) / (args.what + '.md')}")


def number(convert: type, low: float, high: float, low_allowed: bool = False) -> Callable[[str], float]:
    """An argparse type: `convert(text)` (int or float), finite, above `low` (or equal with low_allowed) and at most
    `high`, else a message naming the range; caps come from pfp_core.limits so the nodes share them."""
    kind = "whole number" if convert is int else "number"
    top = str(high) if convert is int else f"{high:g}"
    bounds = f"from {low:g} to {top}" if low_allowed else f"above {low:g} and at most {top}"

    def parse(text: str) -> float:
        try:
            value = convert(text)
        except (ValueError, OverflowError):
            value = math.nan
        finite = convert is int or math.isfinite(value)  # isfinite() of a huge int raises OverflowError
        if not (finite and (low <= value if low_allowed else low < value) and value <= high):
            raise argparse.ArgumentTypeError(f"must be a {kind} {bounds}, got {limits.shown(text)}")
        return value

    parse.__name__ = kind
    return parse


def rate(text: str) -> str:
    """An argparse type: a memory rate HxWxT, each factor from 1 to limits.MAX_RATE."""
    from .config import Rate

    try:
        parsed = Rate.parse(text)  # int() of thousands of digits raises ValueError too
    except ValueError:
        parsed = None
    if parsed is None or max(parsed.h, parsed.w, parsed.t) > limits.MAX_RATE:
        raise argparse.ArgumentTypeError(f"must be HxWxT with whole numbers from 1 to {limits.MAX_RATE}, e.g. 4x4x2, "
                                         f"got {limits.shown(text)}")
    return str(parsed)


positive_int = number(int, 0, 10**9)
seconds = number(float, 0, limits.MAX_VIDEO_SECONDS)
seed = number(int, 0, limits.MAX_SEED, low_allowed=True)


def add_generation_flags(p: argparse.ArgumentParser, default_seconds: float | None) -> None:
    p.add_argument("--seconds", type=seconds, default=default_seconds,
                   required=default_seconds is None, help="video length")
    p.add_argument("--encoder", help="memory encoder .safetensors (default: embedded tiny)")
    p.add_argument("--dit", help="DiT .safetensors (default: embedded tiny)")
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--steps", type=number(int, 0, 1000), default=None,
                   help="sampling steps per chunk (default: the steps the pair was finetuned for, else 12)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--shift", type=number(float, 0, 100), default=1.0, help="noise schedule shift")
    p.add_argument("--solver", choices=("euler", "heun"), default="euler")
    p.add_argument("--chunk-seconds", type=seconds, default=None,
                   help="seconds per chunk (default: the length the encoder was finetuned for, else 1)")
    p.add_argument("--history-seconds", type=seconds, default=20.0, help="history window compressed into memory")
    p.add_argument("--global-prompt", default="", help="prompt carried into every storyboard segment")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_training_flags(p: argparse.ArgumentParser) -> None:
    from .config import DIT_CONFIGS, ENCODER_VARIANTS
    from .training.distributed import DEVICES

    p.add_argument("--out", required=True, help="folder for checkpoints (resumes if it holds one)")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch", type=number(int, 0, 256), default=8)
    p.add_argument("--history-frames", type=number(int, 0, 10_000), nargs="+", default=[32, 48, 64, 96])
    p.add_argument("--chunk-frames", type=number(int, 0, 10_000), default=8, metavar="N",
                   help="finetune: latent frames generated after the history (recorded in the encoder file as the "
                        "chunk length generation uses by default)")
    p.add_argument("--lr", type=number(float, 0, 1e30), default=1e-3)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--rate", type=rate, default="4x4x2")
    p.add_argument("--variant", default="proposed", choices=ENCODER_VARIANTS,
                   help="encoder variant; none: no memory, recent frames only (the sliding-window baseline)")
    p.add_argument("--recent-frames", type=number(int, 0, limits.MAX_RECENT_FRAMES, low_allowed=True), default=0,
                   metavar="R", help="the last R history latents join the context uncompressed beside the memory")
    add_objective_flags(p)
    add_story_flags(p)
    p.add_argument("--no-memory", action="store_true", help="train the same DiT without memory (baseline)")
    precision = p.add_mutually_exclusive_group()
    precision.add_argument("--bf16", dest="bf16", action="store_const", const=True, default=None,
                           help="bf16 autocast (default: whichever of bf16 and fp32 is measured faster here)")
    precision.add_argument("--no-bf16", dest="bf16", action="store_const", const=False, help="train in fp32")
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    start = p.add_mutually_exclusive_group()
    start.add_argument("--model", choices=tuple(DIT_CONFIGS),
                       help="a randomly initialised DiT of this size (default tiny)")
    start.add_argument("--dit-init", metavar="PATH", help="start from a Wan DiT .safetensors (original or ComfyUI "
                       "layout, or a folder of shards); its size sets --model")
    start.add_argument("--init-from", metavar="DIR", help="start from a training folder (finetune after pretrain)")
    p.add_argument("--lora-rank", type=number(int, 0, limits.MAX_WIDTH, low_allowed=True), default=0,
                   help="train a LoRA of this rank on the frozen DiT (0: train the whole DiT)")
    p.add_argument("--lora-alpha", type=number(float, 0, 1e6), help="LoRA scale = alpha / rank (default: alpha = rank)")
    p.add_argument("--grad-checkpointing", action="store_true",
                   help="recompute activations in backward: far less memory for ~1/3 more compute")
    p.add_argument("--device", choices=DEVICES, default="auto", help="auto: this process's GPU if torch sees one")
    p.add_argument("--fsdp", action="store_true", help="under torchrun: shard weights, gradients and AdamW state over "
                   "the processes (FSDP2) for a full finetune too large for one GPU, instead of replicating them (DDP)")
    p.add_argument("--retrieval-mix", type=number(float, 0, 1, low_allowed=True), default=0.25,
                   help="finetune: share of retrieval steps kept")
    p.add_argument("--context-window", type=number(int, 0, 10**6, low_allowed=True), default=0, metavar="LATENTS",
                   help="finetune with --no-memory: the last LATENTS history latents as uncompressed context "
                        "(the sliding-window baseline)")
    p.add_argument("--data", metavar="DIR", help="train on the mp4/webm/mov videos in DIR (default: procedural)")
    p.add_argument("--text-embeddings", metavar="FILE", help="caption embeddings for the clip.txt captions in --data "
                   "(see embed-texts); default: no text (zero context)")
    p.add_argument("--quiet", action="store_true")


def add_objective_flags(p: argparse.ArgumentParser) -> None:
    """What a finetune step learns from: the history's corruption, the noise schedule, the chunk's start and
    reading, the loss weight and the rollouts."""
    p.add_argument("--context-noise", type=float, default=0.0, metavar="LEVEL",
                   help="finetune: corrupt the history with noise of a random level up to LEVEL (drift defence)")
    p.add_argument("--shift", type=number(float, 0, 100), default=1.0,
                   help="noise-level shift of the training schedule (> 1: more high-noise steps, where the context "
                        "decides the content)")
    p.add_argument("--clean-context", action="store_true",
                   help="the DiT reads the context as a clean stream of its own, so generation computes its keys "
                        "and values once per chunk (the encoder file records it)")
    p.add_argument("--anchor-noise", type=number(float, 0, 10), default=None, metavar="SCALE",
                   help="finetune: each chunk's flow starts at the last recent latent plus noise of this scale, not "
                        "at pure noise, so the DiT learns the change from the last frame (needs --recent-frames; "
                        "the encoder file records it)")
    p.add_argument("--predict-change", action="store_true",
                   help="finetune: the DiT reads each noisy chunk minus the last history latent, so it denoises the "
                        "chunk's change from that frame and an unchanged region needs no copy (needs --recent-frames "
                        "and --anchor-noise; the encoder file records it)")
    p.add_argument("--camera-speed", type=number(float, 0, 64, low_allowed=True), default=0.0, metavar="TOKENS",
                   help="DiT tokens the view moves per frame of a caption that pans (story world: 1): the context "
                        "and the chunk sit at their places in the world and each chunk starts from the last frame "
                        "moved with the camera (pfp_core.model.camera; the encoder file records it); 0: screen "
                        "positions")
    p.add_argument("--object-speed", type=number(float, 0, 64, low_allowed=True), default=0.0, metavar="TOKENS",
                   help="DiT tokens an object moves per frame of a caption that makes it leave or come back (story "
                        "world: 1): half of a chunk's width rotary pairs follow the moving object, so its rest "
                        "place in the history sits at zero offset (pfp_core.model.objects; the encoder file records "
                        "it); 0: none")
    p.add_argument("--change-weighting", action="store_true",
                   help="finetune, with --predict-change and a batch of 2 or more: the loss is the mean of the "
                        "samples' errors weighted by one over the variance the skip leaves of their velocity (EDM's "
                        "loss weight), so high noise, where the chunk's content is taken from the context, is not "
                        "drowned by the sensor noise of low-noise samples")
    p.add_argument("--rollout-mix", type=number(float, 0, 1, low_allowed=True), default=0.0, metavar="SHARE",
                   help="finetune: share of next-chunk steps whose history ends in frames the model generated "
                        "itself (the last 4, a chunk at a time, 4 Euler steps, no gradient), so it learns to "
                        "continue its own output (drift defence)")
    p.add_argument("--unroll", type=number(int, 0, 64, low_allowed=True), default=0, metavar="K",
                   help="finetune: each next-chunk step predicts K chunks in a row, each the one-step estimate "
                        "from full noise given the history plus the chunks predicted before it, with the loss on "
                        "every chunk and its gradient through the chain (generate with --steps 1)")
    p.add_argument("--unroll-mix", type=number(float, 0, 1), default=1.0, metavar="SHARE",
                   help="finetune, with --unroll: share of next-chunk steps unrolled; the others denoise one chunk "
                        "at a random noise level from the real history (with --change-weighting weighted), which "
                        "keeps what those steps taught (default 1: all unrolled)")
    p.add_argument("--distill-from", metavar="DIR", help="finetune, with --unroll: the chunks' targets are the one-step "
                   "estimates of the pair in this training folder given the same chain, not the real chunks (teaches "
                   "another attention pattern, e.g. --clean-context, quickly)")


def add_story_flags(p: argparse.ArgumentParser) -> None:
    """The procedural data and its captions."""
    from .config import TEXT_PADDINGS
    from .training.storyworld import SCENES

    p.add_argument("--world", choices=("story", "texture"), default="texture",
                   help="procedural data: the captioned story world or Table 1's fine-texture world")
    p.add_argument("--scenes", nargs="+", choices=SCENES, default=list(SCENES),
                   help="story world: the scenes clips are drawn from, each named as often as it is to be drawn "
                        "(default both, equally; 'static static panning' gives two static clips to a panning one)")
    p.add_argument("--text-padding", choices=TEXT_PADDINGS, default="mean",
                   help="story world: pad captions with the mean of their word vectors (default; the DiT then reads "
                        "the caption wherever it attends) or with zeros (the pairs trained before this option)")


def add_generation_commands(sub: argparse._SubParsersAction) -> None:
    """demo and generate: a video from the embedded or given models."""
    p = sub.add_parser("demo", help="run the embedded tiny model end to end on CPU")
    p.add_argument("--out", default="pfp_demo", help="folder for demo.mp4")
    add_generation_flags(p, default_seconds=8.0)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("generate", help="image + storyboard -> long video")
    p.add_argument("--image", required=True, help="start image (PNG/JPEG)")
    p.add_argument("--storyboard", required=True, help="storyboard file or text, e.g. '0s: ... / 4s: ...'")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--chunks-dir", help="where finished chunks go (default: OUT_chunks/); rerun to resume")
    add_generation_flags(p, default_seconds=None)
    p.set_defaults(func=cmd_generate)


def add_plan_command(sub: argparse._SubParsersAction) -> None:
    """plan: the cost of a model and video size, nothing is run."""
    p = sub.add_parser("plan", help="tokens, FLOPs and memory for a model and video size")
    p.add_argument("--model", required=True)
    p.add_argument("--width", type=number(int, 0, limits.MAX_SIDE), default=832)
    p.add_argument("--height", type=number(int, 0, limits.MAX_SIDE), default=480)
    p.add_argument("--fps", type=number(float, 0, limits.MAX_FPS), default=16)
    p.add_argument("--history-seconds", type=seconds, default=20)
    p.add_argument("--chunk-seconds", type=seconds, default=5)
    p.add_argument("--video-seconds", type=seconds, help="whole video, for the RAM estimate (default: history)")
    p.add_argument("--rate", type=rate, default="4x4x2")
    p.add_argument("--recent-frames", type=number(int, 0, limits.MAX_RECENT_FRAMES, low_allowed=True), default=0,
                   metavar="R", help="latent frames of the history given uncompressed beside the memory (counted in the "
                   "context)")
    p.add_argument("--training", action="store_true",
                   help="memory per GPU of a training step (chunk = the denoised part) instead of generation")
    p.add_argument("--batch", type=number(int, 0, 4096),
                   help="generation: samples per DiT step, 2 with CFG (default) or 1 without; --training: clips per "
                        "GPU (default 1)")
    p.add_argument("--lora-rank", type=number(int, 0, limits.MAX_WIDTH), default=32,
                   help="--training: rank of the LoRA rows")
    p.add_argument("--gpus", type=number(int, 0, 4096), default=1,
                   help="--training: also the memory per GPU of a full finetune sharded over this many GPUs (FSDP)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)


def add_evaluation_commands(sub: argparse._SubParsersAction) -> None:
    """eval-retrieval and eval-continuation: figures of trained models."""
    p = sub.add_parser("eval-retrieval", help="PSNR/SSIM of past frames retrieved from memory")
    p.add_argument("--encoder")
    p.add_argument("--dit")
    p.add_argument("--no-memory-dit", help="the same DiT trained without memory, as a reference")
    p.add_argument("--videos", type=number(int, 0, 10_000), default=16)
    p.add_argument("--seed", type=seed, default=0)
    p.add_argument("--history-frames", type=number(int, 0, 10_000), default=64)
    p.add_argument("--steps", type=number(int, 0, 1000), default=12)
    p.add_argument("--png", help="also write example frames: truth | retrieved | one-step | mean frame | no memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    p = sub.add_parser("eval-continuation", help="continue held-out story-world videos; scene, storyboard and drift "
                       "figures beside baselines (last line: JSON)")
    p.add_argument("--encoder", help="memory encoder (default: embedded tiny)")
    p.add_argument("--dit", help="DiT (default: embedded tiny)")
    p.add_argument("--baseline-encoder", help="sliding-window baseline encoder (default: embedded)")
    p.add_argument("--baseline-dit", help="sliding-window baseline DiT (default: embedded)")
    p.add_argument("--videos", type=positive_int, default=8, help="videos per scene")
    p.add_argument("--seed", type=seed, default=0, help="held-out videos from seeds SEED..SEED+VIDEOS-1")
    p.add_argument("--steps", type=number(int, 0, 1000), default=None,
                   help="sampling steps per chunk (default: each pair its own, the steps it was finetuned for, else 12)")
    p.add_argument("--shift", type=number(float, 0, 100), default=1.0, help="sampling schedule shift")
    p.add_argument("--no-projection", action="store_true",
                   help="append generated chunks to the history as sampled (drift-defence ablation)")
    p.add_argument("--json", action="store_true", help="only the JSON line")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_eval_continuation)


def add_training_commands(sub: argparse._SubParsersAction) -> None:
    """pretrain, finetune, train-tiny, export and embed-texts: making and shipping weights."""
    for stage, text in (("pretrain", "stage 1: frame-retrieval pretraining"), ("finetune", "stage 2: next-chunk finetuning")):
        p = sub.add_parser(stage, help=text)
        add_training_flags(p)
        p.set_defaults(func=cmd_train)
    p = sub.add_parser("train-tiny", help="reproduce the embedded tiny pair and its sliding-window baseline (resumable)")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the twenty-one runs (pfp_pre, pfp_ft, sw_ft, then pfp_ and sw_ change, unroll, "
                        "cooldown, camera, camera_cooldown, objects, objects_cooldown, long_objects, and the shipped "
                        "pfp_long_objects_cooldown and sw_long_objects_cooldown)")
    p.add_argument("--init-from", required=True, metavar="DIR",
                   help="folder with the starting dit.safetensors and encoder.safetensors (README: which ones)")
    p.add_argument("--steps", type=positive_int, default=8000, help="finetuning steps of pfp (the baseline gets "
                   "500 more, as many as pfp's pretraining)")
    p.add_argument("--change-steps", type=positive_int, default=None,
                   help="steps of the change finetune (stage 3; default: as shipped)")
    p.add_argument("--unroll-steps", type=positive_int, default=None,
                   help="steps of the unrolled finetune (stage 4; default: as shipped)")
    p.add_argument("--cooldown-steps", type=positive_int, default=None,
                   help="steps of the cooldown at a fifth of the learning rate (stage 5; default: as shipped)")
    p.add_argument("--camera-steps", type=positive_int, default=None,
                   help="steps of the camera finetune (stage 6; default: as shipped)")
    p.add_argument("--camera-cooldown-steps", type=positive_int, default=None,
                   help="steps of the camera finetune's cooldown (stage 7; default: as shipped)")
    p.add_argument("--object-steps", dest="objects_steps", type=positive_int, default=None,
                   help="steps of the object finetune (stage 8; default: as shipped)")
    p.add_argument("--object-cooldown-steps", type=positive_int, default=None,
                   help="steps of the object finetune's cooldown (stage 9; default: as shipped)")
    p.add_argument("--long-object-steps", dest="long_objects_steps", type=positive_int, default=None,
                   help="steps of the long object finetune (stage 10; default: as shipped)")
    p.add_argument("--long-object-cooldown-steps", type=positive_int, default=None,
                   help="steps of the long object finetune's cooldown that makes the shipped pair and its baseline "
                        "(stage 11; default: as shipped)")
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=cmd_train_tiny)
    p = sub.add_parser("export", help="a training folder -> a DiT or LoRA file for ComfyUI's stock loaders")
    p.add_argument("--from", dest="source", required=True, metavar="DIR", help="pretrain/finetune --out folder")
    p.add_argument("--out", required=True, metavar="FILE", help="the .safetensors to write")
    p.add_argument("--lora", action="store_true",
                   help="only the LoRA (for LoraLoaderModelOnly on the base model) instead of the merged DiT")
    p.add_argument("--dtype", choices=("bf16", "fp16", "fp32"), default="bf16")
    p.set_defaults(func=cmd_export)
    p = sub.add_parser("embed-texts", help="caption embeddings for training, from the clip.txt files beside videos")
    p.add_argument("--data", required=True, metavar="DIR", help="the video folder given to pretrain/finetune --data")
    p.add_argument("--out", required=True, metavar="FILE", help="output .safetensors")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_embed_texts)


def add_queue_command(sub: argparse._SubParsersAction) -> None:
    """queue: API workflows posted to ComfyUI servers."""
    p = sub.add_parser("queue", help="post an API-format ComfyUI workflow to servers with varied seeds/storyboards")
    p.add_argument("--workflow", required=True, metavar="API.json", help="workflow saved in API format (Export (API))")
    p.add_argument("--server", required=True, action="append", metavar="HOST:PORT",
                   help="a ComfyUI server; repeat to spread jobs round-robin")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="one job per seed; sets every seed and noise_seed input")
    seeds.add_argument("--count", type=number(int, 0, 100_000), metavar="N", help="this many seeds, counting up from --seed-start")
    p.add_argument("--seed-start", type=int, metavar="S", help="first seed for --count (default 0)")
    p.add_argument("--storyboard", nargs="+", action="extend", default=[], metavar="FILE_OR_TEXT",
                   help="storyboard files or texts; one job per seed and storyboard")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="fixed inputs for every job, VALUE as JSON or plain text, e.g. 12.steps=8")
    p.add_argument("--out", default="pfp_queue", metavar="DIR", help="outputs go to OUT/<job>_<seed>/")
    p.add_argument("--timeout", type=number(float, 0, 7 * 86400), default=600.0, metavar="SECONDS",
                   help="fail a job after this many silent seconds")
    p.set_defaults(func=cmd_queue)


def add_bench_command(sub: argparse._SubParsersAction) -> None:
    """bench: measurements on this machine and the paper's tables."""
    p = sub.add_parser("bench", help="measure on this machine (speed, planner) or reproduce the paper's tables")
    p.add_argument("what", choices=("speed", "planner", "table1", "table2", "continuation", "gpu"),
                   help="speed: per-chunk cost, memory updates, encoder; planner: planned vs measured tokens, FLOPs "
                        "and memory, and the ComfyUI 12 GB settings; table1: retrieval by encoder variant and rate; "
                        "table2: consistency of long generation; continuation: eval-continuation of the embedded "
                        "pair with its ablation, a 30 s rollout and example frames; gpu: Wan 2.1 1.3B shapes on one "
                        "CUDA GPU (a chunk, a LoRA step, peak VRAM against the planner, the attention kernel)")
    p.add_argument("--out", default="docs/results", help="folder for WHAT.json, WHAT.md and WHAT.png")
    p.add_argument("--quick", action="store_true", help="smaller sizes and budgets (seconds to a minute)")
    p.add_argument("--steps", type=positive_int, help="table1/2: (pre)training steps per run (default 600)")
    p.add_argument("--seeds", type=positive_int, help="table1: training seeds per row (default 3)")
    p.add_argument("--all-rates", action="store_true", help="table1: every variant at every rate, not the paper's rows")
    p.add_argument("--workers", type=number(int, 0, 64), default=2, help="table1/2: training processes in parallel")
    p.add_argument("--work", default="pfp_bench_runs", help="table1/2: folder for checkpoints (resumes from it)")
    p.add_argument("--tiny", action="store_true", help="gpu: the same check at the tiny model's shapes on the CPU")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m pfp_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    add_generation_commands(sub)
    add_plan_command(sub)
    add_evaluation_commands(sub)
    add_training_commands(sub)
    add_queue_command(sub)
    add_bench_command(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except GenerationCancelled as error:
        print(f"error: {error}", file=sys.stderr)
        return 130
    except KeyboardInterrupt:
        print("interrupted: finished chunks are kept; run the same command again to resume", file=sys.stderr)
        return 130
    except MemoryError:
        print("error: memory: this run needs more memory than the machine has; ask for fewer seconds, smaller "
              "frames or a smaller model", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        return 2
    return 0


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


def one_line(error: Exception) -> str:
    """The first line of a message, printable; an OSError that carries only an errno gets its file and what to
    check."""
    if isinstance(error, OSError) and error.errno in DISK_FULL and error.filename:
        return printable(f"cannot write {error.filename} ({error.strerror}); free space or choose another folder")
    if isinstance(error, OSError) and error.strerror and error.filename and str(error).startswith("[Errno"):
        return printable(f"{error.filename}: {error.strerror}; check the path")
    return printable(str(error).split("\n")[0] or type(error).__name__)
