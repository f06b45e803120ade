"""RAM bench: the tiny workflow (VIDEO out, SaveVideo) for 4 s, 40 s and 120 s, each on a fresh ComfyUI server,
with the server's resident memory sampled every 50 ms; plus what the planner says a 2-minute 480p Wan run needs.
Writes docs/results/comfy_ram.md and comfy_ram.json. Figures are recorded, not asserted.

    COMFYUI_PATH=/path/to/ComfyUI OMP_NUM_THREADS=1 nice -n 19 /path/to/comfyui-venv/bin/python \\
        tests/integration/memory_bench.py
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent), str(HERE.parents[1])]

from comfy_env import comfy_server, saved_video, tiny_workflow
from comfy_reliability import resident_bytes

from pfp_core.planner import plan

SECONDS = (4, 40, 120)
MB = 2**20


def sampled_peak(pid: int, stop: threading.Event, peak: list[int]) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], resident_bytes(pid))
        time.sleep(0.05)


def measure(seconds: int, tmp: Path) -> dict:
    """One tiny run of `seconds` on a fresh server: RSS when idle, its peak during the run, and after."""
    with comfy_server(tmp) as server:
        idle = resident_bytes(server.process.pid)
        stop, peak = threading.Event(), [idle]
        sampler = threading.Thread(target=sampled_peak, args=(server.process.pid, stop, peak))
        sampler.start()
        started = time.time()
        try:
            status, body = server.post("/prompt", {"prompt": tiny_workflow(f"ram_{seconds}", float(seconds))})
            assert status == 200, body
            entry = server.wait_for(body["prompt_id"], timeout=3600)
        finally:
            stop.set()
            sampler.join()
        wall = time.time() - started
        frames = len(saved_video(server, entry))
        after = resident_bytes(server.process.pid)
    image_mb = frames * 32 * 32 * 3 * 4 / MB  # the same frames as ComfyUI's float32 IMAGE
    return {"seconds": seconds, "frames": frames, "wall_s": round(wall, 1), "rss_idle_mb": round(idle / MB, 1),
            "rss_peak_mb": round(peak[0] / MB, 1), "rss_after_mb": round(after / MB, 1),
            "peak_over_idle_mb": round((peak[0] - idle) / MB, 1), "frames_as_image_mb": round(image_mb, 2)}


def wan_plan() -> dict:
    figures = plan("wan2.1-1.3b", 832, 480, 16, 20, "4x4x2", 5, video_seconds=120)
    return {key: figures[key] for key in ("model", "width", "height", "fps", "video_seconds", "weights_gb",
                                          "ram_estimate_gb", "ram_as_image_gb")}


def report(data: dict) -> str:
    rows = ["| tiny run | frames | wall time | RSS idle | RSS peak | peak over idle | RSS after | frames as IMAGE |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    rows += [f"| {r['seconds']} s | {r['frames']} | {r['wall_s']} s | {r['rss_idle_mb']} MB | {r['rss_peak_mb']} MB | "
             f"{r['peak_over_idle_mb']} MB | {r['rss_after_mb']} MB | {r['frames_as_image_mb']} MB |" for r in data["runs"]]
    wan = data["wan_plan"]
    peaks = [r["rss_peak_mb"] for r in data["runs"]]
    spread = abs(peaks[-1] - peaks[-2]) if len(peaks) > 1 else 0.0
    return "\n".join([
        "# ComfyUI server RAM over a run (tiny workflow, VIDEO out)", "",
        f"Machine: {data['machine']}. Each run on a fresh ComfyUI 0.3.64 server (`--cpu`), the tiny workflow "
        f"(`workflows/api/pfp_tiny_cpu_api.json`, 32x32 at 8 fps, 1 s chunks, {data['steps']} sampling steps) with "
        "`seconds` set; the "
        "server's VmRSS sampled every 50 ms. Made by `tests/integration/memory_bench.py`.", "",
        *rows, "",
        "The sampler returns a VIDEO read from the chunk files, and SaveVideo encodes it one chunk at a time, so "
        "no step holds the whole run's frames. At 32x32 the frames are small either way (last column); what the "
        "table shows is whether the peak grows with the video's length (longest two runs: peaks "
        f"{spread:.0f} MB apart). Wall times are on 2 CPU cores shared with other work "
        "(a training run, a test suite), so they say little about speed.", "",
        f"Planner, {wan['model']} at {wan['width']}x{wan['height']}, {wan['fps']:g} fps, {wan['video_seconds']:g} s "
        f"(20 s history, 5 s chunks): **{wan['ram_estimate_gb']} GB** of host RAM with VIDEO out (offloaded weights "
        f"{wan['weights_gb']} GB, fp32 latents twice, one chunk of frames), against {wan['ram_as_image_gb']} GB if "
        "the whole video were one float32 IMAGE (`python -m pfp_core plan --model wan2.1-1.3b --width 832 "
        "--height 480 --fps 16 --history-seconds 20 --video-seconds 120 --json`).", ""])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=HERE.parents[1] / "docs" / "results")
    parser.add_argument("--seconds", type=int, nargs="+", default=list(SECONDS))
    args = parser.parse_args()
    runs = []
    for seconds in args.seconds:
        with tempfile.TemporaryDirectory(prefix="pfp_ram_") as tmp:
            runs.append(measure(seconds, Path(tmp)))
            print(json.dumps(runs[-1]), flush=True)
    data = {"machine": f"{platform.machine()}, {platform.python_version()}", "runs": runs, "wan_plan": wan_plan(),
            "steps": tiny_workflow("steps", 1.0)["8"]["inputs"]["steps"]}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "comfy_ram.json").write_text(json.dumps(data, indent=1) + "\n")
    (args.out / "comfy_ram.md").write_text(report(data))


if __name__ == "__main__":
    main()
