"""Command line: python -m pfp_core {demo, generate, plan, eval-retrieval, pretrain, finetune, queue, bench}."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .errors import GenerationCancelled


class OneLineParser(argparse.ArgumentParser):
    """argparse prints the whole usage on a bad argument; a one-line error that names the flag is enough."""

    def error(self, message: str) -> None:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def progress_callbacks(bar: tqdm):
    from .generator import Callbacks

    def on_progress(done: int, total: int) -> None:
        bar.total = total
        bar.n = done
        bar.refresh()

    return Callbacks(on_progress=on_progress)


def run_generation(args: argparse.Namespace, image: np.ndarray, storyboard: str, out_video: Path, chunks: Path):
    from .pipeline import SamplerSettings, VideoSettings, generate, load_engine, write_result

    engine = load_engine(args.encoder, args.dit)
    video = VideoSettings(seconds=args.seconds, chunk_seconds=args.chunk_seconds,
                          history_seconds=args.history_seconds, seed=args.seed)
    sampler = SamplerSettings(steps=args.steps, cfg=args.cfg, shift=args.shift, solver=args.solver)
    started = time.time()
    with tqdm(desc="generate", unit="step", disable=args.quiet) as bar:
        result = generate(engine, image, storyboard, video, sampler, chunks, progress_callbacks(bar), args.global_prompt)
    write_result(result, out_video, engine.fps)
    return result, engine, time.time() - started


def summary(result, fps: int, seconds_taken: float, out_video: Path) -> str:
    frames = result.frames.shape[0]
    tokens = f"{min(result.memory_tokens)}-{max(result.memory_tokens)}" if result.memory_tokens else "n/a"
    return (f"{frames} frames ({frames / fps:.2f} s at {fps} fps), {len(result.memory_tokens) + result.resumed_chunks} "
            f"chunks ({result.resumed_chunks} resumed), memory tokens {tokens}, {seconds_taken:.1f} s -> {out_video}")


def cmd_demo(args: argparse.Namespace) -> None:
    from . import procedural
    from .video_io import save_image

    out = Path(args.out)
    image = procedural.make_video(procedural.heldout_seed(7), 1).frames[0]
    storyboard = f"0s: a textured world with moving objects / {args.seconds / 2:g}s: the camera comes back to the start"
    result, engine, taken = run_generation(args, image, storyboard, out / "demo.mp4", out / "demo_chunks")
    save_image(contact_sheet(result.frames.numpy()), out / "demo_frames.png")
    print("demo: " + summary(result, engine.fps, taken, out / "demo.mp4"))


def contact_sheet(frames: np.ndarray, columns: int = 16) -> np.ndarray:
    """Every frame in a grid, enlarged 3x: the quickest way to look at a tiny video."""
    rows = -(-len(frames) // columns)
    padded = np.concatenate([frames, np.zeros((rows * columns - len(frames), *frames.shape[1:]), np.uint8)])
    grid = padded.reshape(rows, columns, *frames.shape[1:]).transpose(0, 2, 1, 3, 4)
    sheet = grid.reshape(rows * frames.shape[1], columns * frames.shape[2], 3)
    return sheet.repeat(3, axis=0).repeat(3, axis=1)


def cmd_generate(args: argparse.Namespace) -> None:
    from .storyboard import read_storyboard
    from .video_io import load_image

    out = Path(args.out)
    if out.suffix.lower() != ".mp4":  # checked first: the video is written only after every chunk is made
        raise ValueError(f"out: '{out.name}' must end in .mp4 (the video is written as mp4)")
    storyboard = read_storyboard(args.storyboard)
    chunks = Path(args.chunks_dir) if args.chunks_dir else out.with_name(out.stem + "_chunks")
    result, engine, taken = run_generation(args, load_image(args.image), storyboard, out, chunks)
    print("generate: " + summary(result, engine.fps, taken, out))


def cmd_plan(args: argparse.Namespace) -> None:
    from .planner import format_plan_table, plan

    figures = plan(args.model, args.width, args.height, args.fps, args.history_seconds, args.rate, args.chunk_seconds,
                   video_seconds=args.video_seconds)
    print(json.dumps(figures, indent=1) if args.json else format_plan_table(figures))


def cmd_eval(args: argparse.Namespace) -> None:
    from .checkpoint import load_dit, load_encoder
    from .evaluation import RetrievalSettings, evaluate_retrieval
    from .pipeline import DEFAULT_DIT, DEFAULT_ENCODER

    dit = load_dit(args.dit or DEFAULT_DIT)
    encoder = load_encoder(args.encoder or DEFAULT_ENCODER)
    baseline = load_dit(args.no_memory_dit) if args.no_memory_dit else None
    settings = RetrievalSettings(videos=args.videos, seed=args.seed, history_frames=args.history_frames, steps=args.steps)
    result, examples = evaluate_retrieval(dit, encoder, settings, baseline)
    if args.png:
        from .video_io import save_image

        save_image(examples.repeat_interleave(3, 0).repeat_interleave(3, 1).numpy(), args.png)
    print(json.dumps(result, indent=None if args.json else 1))


def cmd_train(args: argparse.Namespace) -> None:
    from .training import TrainSettings, train

    settings = TrainSettings(stage=args.command, out=Path(args.out), steps=args.steps, batch=args.batch,
                             history_frames=tuple(args.history_frames), lr=args.lr, seed=args.seed,
                             use_memory=not args.no_memory, bf16=not args.no_bf16, rate=args.rate,
                             variant=args.variant, checkpoint_every=args.checkpoint_every,
                             retrieval_mix=args.retrieval_mix,
                             init_from=Path(args.init_from) if args.init_from else None)
    losses = train(settings, progress=not args.quiet)
    if losses:
        print(f"{args.command}: steps {args.steps}, last loss {losses[-1]:.4f} -> {args.out}")


def cmd_queue(args: argparse.Namespace) -> None:
    from .queue_client import format_summary, load_workflow, parse_override, parse_server, plan_jobs, run_jobs, seed_list
    from .storyboard import read_storyboard

    if args.seed_start is not None and args.count is None:
        raise ValueError("--seed-start needs --count")
    servers = [parse_server(text) for text in args.server]
    seeds = seed_list(args.seeds, args.count, args.seed_start or 0)
    plan = plan_jobs(load_workflow(Path(args.workflow)), seeds, [read_storyboard(s) for s in args.storyboard],
                     [parse_override(text) for text in args.set])
    print(f"queue: {len(plan.jobs)} jobs on {len(servers)} servers", flush=True)
    for flag, targets in plan.changed.items():
        print(f"  {flag} sets {', '.join(targets)}", flush=True)
    results = run_jobs(plan.jobs, servers, Path(args.out), args.timeout, lambda line: print(line, flush=True))
    print(format_summary(results))
    failed = [result for result in results if result.status != "ok"]
    if failed:
        raise ValueError(f"{len(failed)} of {len(results)} jobs failed; job {failed[0].job.index}: {failed[0].error}")
    print(f"queue: outputs in {args.out}")


def cmd_bench(args: argparse.Namespace) -> None:
    from .bench import STAGES, run_speed

    with tqdm(total=len(STAGES), desc="bench", unit="stage", disable=args.quiet) as bar:
        def on_stage(stage: str) -> None:
            bar.n = STAGES.index(stage)
            bar.set_description(f"bench: {stage}")

        results = run_speed(Path(args.out), quick=args.quick, on_stage=on_stage)
        bar.n = len(STAGES)
        bar.set_description("bench: done")
    met = sum(v["met"] for v in results["verdicts"])
    print(f"bench speed: {met} of {len(results['verdicts'])} targets met, {results['bench_seconds']:.0f} s -> "
          f"{Path(args.out) / 'speed.md'}")


def positive_float(text: str) -> float:
    value = float(text)
    if not np.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive whole number, got {text}")
    return value


def add_generation_flags(p: argparse.ArgumentParser, seconds: float | None) -> None:
    p.add_argument("--seconds", type=positive_float, default=seconds, required=seconds is None, help="video length")
    p.add_argument("--encoder", help="memory encoder .safetensors (default: embedded tiny)")
    p.add_argument("--dit", help="DiT .safetensors (default: embedded tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--steps", type=positive_int, default=12, help="sampling steps per chunk")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (1 = off)")
    p.add_argument("--shift", type=positive_float, default=1.0, help="noise schedule shift")
    p.add_argument("--solver", choices=("euler", "heun"), default="euler")
    p.add_argument("--chunk-seconds", type=positive_float, default=1.0)
    p.add_argument("--history-seconds", type=positive_float, default=20.0, help="history window compressed into memory")
    p.add_argument("--global-prompt", default="", help="prompt carried into every storyboard segment")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def add_training_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="folder for checkpoints (resumes if it holds one)")
    p.add_argument("--steps", type=positive_int, default=1000)
    p.add_argument("--batch", type=positive_int, default=8)
    p.add_argument("--history-frames", type=positive_int, nargs="+", default=[32, 48, 64, 96])
    p.add_argument("--lr", type=positive_float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--rate", default="4x4x2")
    p.add_argument("--variant", default="proposed", choices=("proposed", "only_lr", "without_lr", "large_patchifier"))
    p.add_argument("--no-memory", action="store_true", help="train the same DiT without memory (baseline)")
    p.add_argument("--no-bf16", action="store_true", help="train in fp32 instead of bf16 autocast")
    p.add_argument("--checkpoint-every", type=positive_int, default=100)
    p.add_argument("--init-from", help="start from a checkpoint folder (finetune after pretrain)")
    p.add_argument("--retrieval-mix", type=float, default=0.25, help="finetune: share of retrieval steps kept")
    p.add_argument("--quiet", action="store_true")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="python -m pfp_core", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=OneLineParser)
    p = sub.add_parser("demo", help="run the embedded tiny model end to end on CPU")
    p.add_argument("--out", default="pfp_demo", help="folder for demo.mp4")
    add_generation_flags(p, seconds=8.0)
    p.set_defaults(func=cmd_demo)
    p = sub.add_parser("generate", help="image + storyboard -> long video")
    p.add_argument("--image", required=True, help="start image (PNG/JPEG)")
    p.add_argument("--storyboard", required=True, help="storyboard file or text, e.g. '0s: ... / 4s: ...'")
    p.add_argument("--out", required=True, help="output .mp4")
    p.add_argument("--chunks-dir", help="where finished chunks go (default: OUT_chunks/); rerun to resume")
    add_generation_flags(p, seconds=None)
    p.set_defaults(func=cmd_generate)
    p = sub.add_parser("plan", help="tokens, FLOPs and memory for a model and video size")
    p.add_argument("--model", required=True)
    p.add_argument("--width", type=positive_int, default=832)
    p.add_argument("--height", type=positive_int, default=480)
    p.add_argument("--fps", type=positive_float, default=16)
    p.add_argument("--history-seconds", type=positive_float, default=20)
    p.add_argument("--chunk-seconds", type=positive_float, default=5)
    p.add_argument("--video-seconds", type=positive_float, help="whole video, for the RAM estimate (default: history)")
    p.add_argument("--rate", default="4x4x2")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plan)
    p = sub.add_parser("eval-retrieval", help="PSNR/SSIM of past frames retrieved from memory")
    p.add_argument("--encoder")
    p.add_argument("--dit")
    p.add_argument("--no-memory-dit", help="the same DiT trained without memory, as a reference")
    p.add_argument("--videos", type=positive_int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--history-frames", type=positive_int, default=64)
    p.add_argument("--steps", type=positive_int, default=12)
    p.add_argument("--png", help="also write example frames: truth | retrieved | one-step | mean frame | no memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_eval)
    for stage, text in (("pretrain", "stage 1: frame-retrieval pretraining"), ("finetune", "stage 2: next-chunk finetuning")):
        p = sub.add_parser(stage, help=text)
        add_training_flags(p)
        p.set_defaults(func=cmd_train)
    p = sub.add_parser("queue", help="post an API-format ComfyUI workflow to servers with varied seeds/storyboards")
    p.add_argument("--workflow", required=True, metavar="API.json", help="workflow saved in API format (Export (API))")
    p.add_argument("--server", required=True, action="append", metavar="HOST:PORT",
                   help="a ComfyUI server; repeat to spread jobs round-robin")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                       help="one job per seed; sets every seed and noise_seed input")
    seeds.add_argument("--count", type=positive_int, metavar="N", help="this many seeds, counting up from --seed-start")
    p.add_argument("--seed-start", type=int, metavar="S", help="first seed for --count (default 0)")
    p.add_argument("--storyboard", nargs="+", action="extend", default=[], metavar="FILE_OR_TEXT",
                   help="storyboard files or texts; one job per seed and storyboard")
    p.add_argument("--set", nargs="+", action="extend", default=[], metavar="NODE_ID.INPUT=VALUE",
                   help="fixed inputs for every job, VALUE as JSON or plain text, e.g. 12.steps=8")
    p.add_argument("--out", default="pfp_queue", metavar="DIR", help="outputs go to OUT/<job>_<seed>/")
    p.add_argument("--timeout", type=positive_float, default=600.0, metavar="SECONDS",
                   help="fail a job after this many silent seconds")
    p.set_defaults(func=cmd_queue)
    p = sub.add_parser("bench", help="measure speed on this machine: per-chunk cost, memory updates, encoder")
    p.add_argument("what", choices=("speed",), help="which benchmark")
    p.add_argument("--out", default="docs/results", help="folder for speed.json, speed.md and speed.png")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about a minute)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)
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
    except (ValueError, OSError) as error:
        print(f"error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    return 0
