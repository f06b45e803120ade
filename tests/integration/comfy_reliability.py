"""Reliability through a real ComfyUI server's /prompt: the bad-input catalog, /interrupt at random moments
followed by a re-queue, and a batch soak. tests/integration/test_reliability.py runs these with small counts;
tests/integration/reliability_bench.py runs them at full size and writes docs/results/reliability.md.

Every bad input must come back as a /prompt validation error (HTTP 400) or an execution error whose first line
names the field, and the server must stay up (the process runs and answers /system_stats).
"""
from __future__ import annotations

import contextlib
import math
import random
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


from bad_inputs import (PAYLOAD_MARK, encoder_unlike_dit, encoder_with, mount, pickle_file, read_only_folder, set_nan,
                        snapshot, write)
from comfy_env import ComfyServer, run_folders, saved_files, saved_video, tiny_workflow
from interruptions import (Interruption, RunResult, chunks_on_disk, generation_span, read_run, resumed_chunks, same_run,
                           wait_for)

from pfp_core.generation.pipeline import DEFAULT_ENCODER
from pfp_core.video_io import read_video

Build = Callable[[ComfyServer, contextlib.ExitStack], dict]  # (server, cleanups) -> API workflow


@dataclass(frozen=True)
class ComfyCase:
    name: str
    field: str | None  # what the message must contain; None: a valid edge input that must run
    workflow: Build
    frames: int = 0  # accepted cases: frames the saved video or images must hold


# -------------------------------------------------------------------------------------------------- workflows

def tiny(run_name: str, inputs: dict[str, object] | None = None, seconds: float = 3.0) -> dict:
    """The tiny workflow with inputs set as {"NODE.INPUT": value} (6 storyboard, 8 sampler, 5 encoder loader)."""
    workflow = tiny_workflow(run_name, seconds)
    for key, value in (inputs or {}).items():
        node, name = key.split(".")
        workflow[node]["inputs"][name] = value
    return workflow


def with_start_image(run_name: str, width: int, height: int) -> dict:
    workflow = tiny(run_name)
    workflow["7"] = {"class_type": "EmptyImage", "inputs": {"width": width, "height": height, "batch_size": 1,
                                                             "color": 0x808080}}
    return workflow


def compress(history: dict, memory_name: str = "history") -> dict:
    """Compress History of `history` (a node that makes IMAGE or LATENT, wired to the matching input) -> Save."""
    source = "latent" if history["class_type"] in LATENT_NODES else "images"
    return {
        "1": {"class_type": "UNETLoader", "inputs": {"unet_name": "pfp_tiny_dit.safetensors", "weight_dtype": "default"}},
        "3": {"class_type": "PFPTinyVAE", "inputs": {}},
        "5": {"class_type": "PFPLoadMemoryEncoder", "inputs": {"encoder_name": "pfp_tiny_encoder.safetensors",
                                                               "dtype": "default"}},
        "6": history,
        "7": {"class_type": "PFPCompressHistory", "inputs": {"memory_encoder": ["5", 0], "vae": ["3", 0],
                                                             "model": ["1", 0], source: ["6", 0], "fps": 8.0}},
        "8": {"class_type": "PFPSaveMemory", "inputs": {"memory": ["7", 0], "name": memory_name}},
    }


LATENT_NODES = {"EmptyLatentImage", "EmptyHunyuanLatentVideo", "TrimVideoLatent"}
PROCEDURAL = {"class_type": "PFPProceduralImage", "inputs": {"seed": 3, "size": 32}}


def empty_video_latent() -> dict:
    workflow = compress({"class_type": "TrimVideoLatent", "inputs": {"samples": ["9", 0], "trim_amount": 1}})
    workflow["9"] = {"class_type": "EmptyHunyuanLatentVideo", "inputs": {"width": 32, "height": 32, "length": 1,
                                                                         "batch_size": 1}}
    return workflow


def retrieve_at(seconds: float) -> dict:
    workflow = compress(PROCEDURAL)
    del workflow["8"]
    workflow["10"] = {"class_type": "CLIPTextEncode", "inputs": {"clip": ["11", 0], "text": ""}}
    workflow["11"] = {"class_type": "PFPTinyTextEncoder", "inputs": {}}
    workflow["12"] = {"class_type": "PFPRetrieveFrame", "inputs": {
        "model": ["1", 0], "vae": ["3", 0], "memory": ["7", 0], "positive": ["10", 0], "negative": ["10", 0],
        "time_seconds": seconds, "fps": 8.0, "width": 32, "height": 32, "seed": 0, "steps": 2, "cfg": 1.0,
        "sampler_name": "euler", "scheduler": "simple"}}
    workflow["13"] = {"class_type": "SaveImage", "inputs": {"images": ["12", 0], "filename_prefix": "retrieved"}}
    return workflow


def load_memory(name: str) -> dict:
    return {"1": {"class_type": "PFPLoadMemory", "inputs": {"memory_file": name}},
            "2": {"class_type": "PFPSaveMemory", "inputs": {"memory": ["1", 0], "name": "copy"}}}


def plan(**inputs) -> dict:
    values = {"model": "wan2.1-1.3b", "width": 832, "height": 480, "fps": 16.0, "video_seconds": 60.0,
              "history_seconds": 20.0, "chunk_seconds": 5.0, "rate": "4x4x2", **inputs}
    return {"1": {"class_type": "PFPPlan", "inputs": values}}


def encoders(server: ComfyServer) -> Path:
    return server.models / "pfp_encoders"


def encoder_file(make: Callable[[Path], Path]) -> Build:
    """The tiny workflow with a file `make` puts in models/pfp_encoders as its encoder."""
    def build(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
        path = make(encoders(server))
        return tiny(f"enc_{path.stem}", {"5.encoder_name": path.name})
    return build


def escaping_encoder(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
    outside = server.output.parent / "outside_encoder.safetensors"
    shutil.copyfile(DEFAULT_ENCODER, outside)  # a real encoder, but outside every pfp_encoders folder
    (encoders(server) / "linked.safetensors").symlink_to(outside)
    return tiny("enc_link", {"5.encoder_name": "linked.safetensors"})


def escaping_run_folder(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
    outside = server.output.parent / "outside"
    outside.mkdir()
    (server.output / "pfp").mkdir(exist_ok=True)
    (server.output / "pfp" / "link").symlink_to(outside)
    return tiny("link")


def locked_run_folder(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
    (server.output / "pfp").mkdir(exist_ok=True)
    read_only_folder(server.output / "pfp" / "locked", stack)
    return tiny("locked")


def small_disk(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
    """A 360 kB tmpfs as the run folder: the manifest and two 156 kB chunks fit, the third does not."""
    folder = server.output / "pfp" / "small"
    folder.mkdir(parents=True)
    mount(folder, "size=360k", stack)
    stack.callback(check_whole_chunks, folder, 2)  # runs before the unmount: an ExitStack unwinds last in, first out
    return tiny("small", seconds=4.0)


def check_whole_chunks(parent: Path, count: int) -> None:
    """What a failed write must leave in the run's folder: `count` finished chunks that load, and no temporary."""
    (folder,) = parent.glob("run_*")
    result = read_run(folder, {"manifest.json"}, None)
    assert len(result.chunk_frames) == count and not result.strays, (sorted(result.chunk_frames), result.strays)


def copied_run(server: ComfyServer, name: str) -> Path:
    """The folder of a finished run copied to run name `name` (so ComfyUI's cache does not skip the sampler, and
    the same settings find the copy)."""
    entry = run(server, tiny("whole"))
    assert entry["status"]["status_str"] == "success", entry["status"]
    shutil.copytree(server.output / "pfp" / "whole", server.output / "pfp" / name, dirs_exist_ok=True)
    (folder,) = run_folders(server, name)
    return folder


def damaged_manifest_folder(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
    write(copied_run(server, "bad_manifest") / "manifest.json", b"{not json")
    return tiny("bad_manifest")


def damaged_chunk_folder(server: ComfyServer, stack: contextlib.ExitStack) -> dict:
    """A finished run's copy with chunk 1 cut in half."""
    chunk = copied_run(server, "damaged") / "chunk_0001.safetensors"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return tiny("damaged")


def case(name: str, field: str | None, build: Callable[[], dict], frames: int = 0) -> ComfyCase:
    return ComfyCase(name, field, lambda server, stack: build(), frames)


NAN, HUGE = math.nan, "a " * 60_000
CASES = [
    # model files in models/pfp_encoders
    ComfyCase("encoder is a text file named .safetensors", "encoder",
              encoder_file(lambda d: write(d / "text.safetensors", b"not weights\n" * 20))),
    ComfyCase("encoder file cut in half", "encoder",
              encoder_file(lambda d: write(d / "half.safetensors", DEFAULT_ENCODER.read_bytes()[:4000]))),
    ComfyCase("pickle renamed .safetensors (its payload would create a file)", "encoder",
              encoder_file(lambda d: pickle_file(d, 2))),
    ComfyCase("encoder width 256 for a DiT of width 128", "encoder",
              encoder_file(lambda d: encoder_unlike_dit(d, "wide.safetensors", dim=256))),
    ComfyCase("encoder reads 48 latent channels, the DiT makes 16", "encoder",
              encoder_file(lambda d: encoder_unlike_dit(d, "deep.safetensors", in_channels=48))),
    ComfyCase("encoder rate metadata unreadable ('4x4')", "encoder",
              encoder_file(lambda d: encoder_with(d, "rate44.safetensors", {"rate": "4x4"}))),
    ComfyCase("encoder weights hold NaN", "encoder",
              encoder_file(lambda d: encoder_with(d, "nan.safetensors", edit=set_nan))),
    # names from the workflow
    case("encoder_name with '../'", "encoder_name", lambda: tiny("enc_up", {"5.encoder_name": "../../x.safetensors"})),
    case("encoder_name absolute", "encoder_name", lambda: tiny("enc_abs", {"5.encoder_name": str(DEFAULT_ENCODER)})),
    ComfyCase("encoder_name is a symlink to a file outside the folder", "encoder_name", escaping_encoder),
    case("run_name with '../'", "run_name", lambda: tiny("../escape")),
    case("run_name absolute", "run_name", lambda: tiny("/tmp/pfp_escape")),
    case("run_name empty", "run_name", lambda: tiny("  ")),
    ComfyCase("run_name is a symlink to a folder outside output/pfp", "run_name", escaping_run_folder),
    case("Save Memory name with '../'", "name", lambda: compress(PROCEDURAL, "../../escape")),
    case("Load Memory file with '../'", "memory_file", lambda: load_memory("../../comfy.log")),
    # storyboard (refused at /prompt, before anything runs)
    case("storyboard times out of order", "storyboard line", lambda: tiny("sb", {"6.storyboard": "1s: a\n0s: b"})),
    case("storyboard range overlaps the next line", "storyboard line",
         lambda: tiny("sb", {"6.storyboard": "[0s-1.5s: a]\n1s: b"})),
    case("storyboard line after the end of the video", "storyboard line",
         lambda: tiny("sb", {"6.storyboard": "0s: a\n5s: b"})),
    case("empty storyboard", "storyboard", lambda: tiny("sb", {"6.storyboard": ""})),
    case("storyboard with bytes that were not UTF-8 (lone surrogate)", "storyboard",
         lambda: tiny("sb", {"6.storyboard": "0s: un caf\udce9"})),
    case("storyboard of 120,000 characters", "storyboard", lambda: tiny("sb", {"6.storyboard": HUGE})),
    case("negative prompt of 120,000 characters", "negative prompt", lambda: tiny("sb", {"6.negative_prompt": HUGE})),
    case("NaN seconds", "seconds", lambda: tiny("sb", {"6.seconds": NAN})),
    case("a billion seconds in 0.1 s chunks", "seconds", lambda: tiny("sb", {"6.seconds": 1e9, "6.chunk_seconds": 0.1})),
    # sampler numbers
    case("NaN cfg", "cfg", lambda: tiny("nan_cfg", {"8.cfg": NAN})),
    case("NaN history_seconds", "history_seconds", lambda: tiny("nan_hist", {"8.history_seconds": NAN})),
    case("cfg 31 (above 30)", "cfg", lambda: tiny("cfg31", {"8.cfg": 31.0})),
    case("zero steps", "steps", lambda: tiny("steps0", {"8.steps": 0})),
    case("odd 33x33 start image", "start_image", lambda: with_start_image("odd", 33, 33)),
    # history
    case("4-channel image latent as the history", "latent",
         lambda: compress({"class_type": "EmptyLatentImage", "inputs": {"width": 32, "height": 32, "batch_size": 1}})),
    case("empty history (a video latent trimmed to 0 frames)", "latent", empty_video_latent),
    case("Retrieve Frame at 100 s of a 1-frame memory", "time_seconds", lambda: retrieve_at(100.0)),
    # plan
    case("plan: unknown model name", "model", lambda: plan(model="wan9")),
    case("plan: rate not HxWxT", "rate", lambda: plan(rate="4x4")),
    # the run folder
    ComfyCase("run folder not writable", "run_name", locked_run_folder),
    ComfyCase("disk full while writing chunk 2 (360 kB tmpfs)", "run_name", small_disk),
    ComfyCase("run folder's manifest damaged", "run_name", damaged_manifest_folder),
    ComfyCase("finished chunk file damaged", "run_name", damaged_chunk_folder),
]

ACCEPTED = [
    case("one-frame history", None, lambda: compress(PROCEDURAL, "one_frame")),
    case("chunk longer than the video (5 s chunks, 1 s video)", None,
         lambda: tiny("long_chunk", {"6.storyboard": "0s: a cat", "6.seconds": 1.0, "6.chunk_seconds": 5.0}), frames=8),
    case("2x2 start image", None, lambda: with_start_image("tiny_image", 2, 2), frames=24),
    case("48x40 start image", None, lambda: with_start_image("wide_image", 48, 40), frames=24),
]


# ---------------------------------------------------------------------------------------------- running a case

def run(server: ComfyServer, workflow: dict) -> dict:
    """Queue a workflow that passes validation and wait for its /history entry."""
    status, body = server.post("/prompt", {"prompt": workflow})
    assert status == 200, body
    return server.wait_for(body["prompt_id"])


def validation_message(body: dict) -> str:
    """The first node error of a 400 answer as one line: ours ('field: ...') or ComfyUI's ('field: Value ...')."""
    error = next(iter(body["node_errors"].values()))["errors"][0]
    if error["type"] == "custom_validation_failed":
        return error["details"].split(" - ", 1)[1]  # ComfyUI puts "<first input> - " in front of our message
    return f"{error['details']}: {error['message']}"


def run_case(server: ComfyServer, case: ComfyCase) -> str:
    """Run one case, assert what it promises, and return the message a user sees (or what an accepted case made)."""
    with contextlib.ExitStack() as stack:
        workflow = case.workflow(server, stack)
        before = snapshot(server.output)
        status, body = server.post("/prompt", {"prompt": workflow})
        if status == 400:
            message = validation_message(body)
        else:
            assert status == 200, body
            entry = server.wait_for(body["prompt_id"])
            errors = [m[1] for m in entry["status"]["messages"] if m[0] == "execution_error"]
            message = errors[0]["exception_message"].strip() if errors else accepted(server, entry)
        after = snapshot(server.output)  # before a tmpfs the case mounted goes away
    assert {name: after.get(name) for name in before} == before, "a file that existed before changed or vanished"
    assert not [name for name in after if ".tmp" in name], f"temporary files left: {sorted(after)}"
    assert server.is_up(), f"the server went down; log tail: {server.log()[-2000:]}"
    assert not (encoders(server) / PAYLOAD_MARK).exists(), "a pickle payload ran"
    assert len(message.splitlines()) == 1, message
    if case.field is None:
        assert message == (f"accepted: {case.frames} frames" if case.frames else "accepted"), message
    else:
        assert message.startswith(case.field) and "Traceback" not in message, message
    return message


def accepted(server: ComfyServer, entry: dict) -> str:
    frames = sum(len(read_video(path)[0]) if path.suffix == ".mp4" else 1 for path in saved_files(server, entry))
    return f"accepted: {frames} frames" if frames else "accepted"


# --------------------------------------------------------------------------------------------- interruptions

def prompt_done(server: ComfyServer, prompt_id: str) -> Callable[[], bool]:
    return lambda: bool(server.get(f"/history/{prompt_id}"))


def new_run_folder(server: ComfyServer, run_name: str, done: Callable[[], bool]) -> Path | None:
    """The folder a queued run creates under output/pfp/<run_name> (named by its settings), once its manifest is
    written; None if the run ended first."""
    if not wait_for(server.output / "pfp" / run_name, done):
        return None
    while not (found := run_folders(server, run_name)):
        time.sleep(0.005)
    return found[0] if wait_for(found[0] / "manifest.json", done) else None


def comfy_reference(server: ComfyServer, seconds: float) -> tuple[RunResult, float]:
    """The uninterrupted run (1 s chunks), and its generation span."""
    status, body = server.post("/prompt", {"prompt": tiny_workflow("reference", seconds)})
    assert status == 200, body
    folder = new_run_folder(server, "reference", prompt_done(server, body["prompt_id"]))
    span = generation_span(folder, round(seconds), prompt_done(server, body["prompt_id"]))
    entry = server.wait_for(body["prompt_id"])
    assert entry["status"]["status_str"] == "success", entry["status"]
    return read_run(folder, {"manifest.json"}, saved_video(server, entry)), span


def interrupt_comfy(server: ComfyServer, name: str, seconds: float, delay: float, reference: RunResult) -> Interruption:
    status, body = server.post("/prompt", {"prompt": tiny_workflow(name, seconds)})
    assert status == 200, body
    prompt_id = body["prompt_id"]
    folder = new_run_folder(server, name, prompt_done(server, prompt_id))
    time.sleep(delay)
    server.post("/interrupt", {"prompt_id": prompt_id})
    entry = server.wait_for(prompt_id)
    folder = folder or run_folders(server, name)[0]
    stopped = any(m[0] == "execution_interrupted" for m in entry["status"]["messages"])
    kept = len(chunks_on_disk(folder))
    resumed = run(server, tiny_workflow(name, seconds))
    done = resumed["status"]["status_str"] == "success"
    # when the stop came after the sampler had finished, ComfyUI's cache hands its video straight to SaveVideo
    cached = any("8" in m[1]["nodes"] for m in resumed["status"]["messages"] if m[0] == "execution_cached")
    summary = resumed["outputs"].get("8", {}).get("text", [""])[0]
    resumed_ok = done and (cached or resumed_chunks(summary) == kept)
    result = read_run(folder, {"manifest.json"}, saved_video(server, resumed) if done else None)
    return Interruption("/interrupt", round(delay, 3), stopped, kept, server.is_up(), resumed_ok,
                        done and same_run(reference, result), result.strays)


def comfy_interruptions(server: ComfyServer, count: int, seed: int = 0, seconds: float = 3.0) -> list[Interruption]:
    """`count` tiny runs interrupted at random moments (redrawn when the run finished first), each re-queued."""
    reference, span = comfy_reference(server, seconds)
    rng = random.Random(seed)
    results: list[Interruption] = []
    for attempt in range(3 * count):
        if sum(r.stopped for r in results) == count:
            break
        results.append(interrupt_comfy(server, f"interrupt_{attempt}", seconds, rng.uniform(0, span), reference))
    return results


# ------------------------------------------------------------------------------------------------ batch soak

def resident_bytes(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))) * 1024


def leftover_files(server: ComfyServer) -> dict[str, int]:
    """Files that should not pile up: ComfyUI's temp folder, and temporaries anywhere under output."""
    return {"temp": sum(1 for p in server.temp.rglob("*") if p.is_file()),
            "tmp_in_output": sum(1 for p in server.output.rglob("*") if ".tmp" in p.name)}


def batch_soak(server: ComfyServer, prompts: int, warmup: int = 5, seconds: float = 3.0) -> dict:
    """Queue `warmup` tiny runs and let them finish, then queue the rest at once. Resident memory and leftover
    files after the warm-up are the baseline for after the last run."""
    def queue(first: int, last: int) -> list[dict]:
        ids = []
        for i in range(first, last):
            status, body = server.post("/prompt", {"prompt": tiny_workflow(f"soak_{i}", seconds)})
            assert status == 200, body
            ids.append(body["prompt_id"])
        entries = []
        for prompt_id in ids:
            entries.append(server.wait_for(prompt_id, timeout=600))
            trace.append(resident_bytes(server.process.pid))
        return entries

    trace: list[int] = []
    entries = queue(0, warmup)
    baseline, files_before = resident_bytes(server.process.pid), leftover_files(server)
    entries += queue(warmup, prompts)
    final, files_after = resident_bytes(server.process.pid), leftover_files(server)
    runs = [folder for i in range(prompts) for folder in run_folders(server, f"soak_{i}")]
    return {"prompts": prompts, "warmup": warmup,
            "succeeded": sum(e["status"]["status_str"] == "success" for e in entries),
            "rss_after_warmup_mb": round(baseline / 2**20, 1), "rss_after_last_mb": round(final / 2**20, 1),
            "rss_drift_pct": round(100 * (final - baseline) / baseline, 2),
            "rss_trace_mb": [round(r / 2**20, 1) for r in trace],
            "leftover_after_warmup": files_before, "leftover_after_last": files_after,
            "files_per_run_folder": sorted({len(list(folder.iterdir())) for folder in runs}),
            "server_up": server.is_up()}
