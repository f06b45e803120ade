"""Stop `python -m pfp_core generate` at random moments (SIGINT or SIGKILL), run the same command again, and
compare the result with an uninterrupted run of the same seed: every chunk's uint8 frames and the decoded
video must be byte-equal, and no temporary file may be left behind.

The random moment is drawn over the generation itself: from the moment the run's manifest.json appears (the
chunk folder is open, the model loaded) to the time the uninterrupted run took from there to write its last
chunk, so a signal can land in any chunk or chunk write (and, when a run is faster than the reference, in the
final video write). tests/test_interruptions.py runs
a couple of each; tests/integration/reliability_bench.py runs 20 of each and reports them.
"""
from __future__ import annotations

import random
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from bad_inputs import REPO, start_image
from safetensors.torch import load_file

from pfp_core.video_io import read_video

STORYBOARD = "0s: a textured world with moving objects / 2s: the camera comes back to the start"
SECONDS = 3  # 3 chunks of 1 s at 8 fps
STEPS = 30  # sampling steps per chunk: enough that generation, not start-up or exit, is where signals land


@dataclass
class RunResult:
    """What a run left on disk: each chunk's frames, the decoded video, and any other file."""

    chunk_frames: dict[str, bytes]
    video: np.ndarray | None
    strays: list[str]


@dataclass
class Interruption:
    how: str  # SIGINT, SIGKILL or /interrupt
    delay: float  # seconds after the run's manifest appeared
    stopped: bool  # False: the run had already finished when the signal came
    chunks_kept: int  # finished chunks on disk after the stop
    exit_ok: bool  # SIGINT: exit code 130 and no traceback; SIGKILL: killed; /interrupt: the server says so
    resumed_ok: bool  # the repeated command finished
    identical: bool  # frames of every chunk and the decoded video equal the uninterrupted run's
    strays: list[str]  # files left besides the video, manifest.json and chunks

    @property
    def survived(self) -> bool:
        return self.exit_ok and self.resumed_ok and self.identical and not self.strays

    def row(self) -> dict:
        return {**asdict(self), "survived": self.survived}


def generate_argv(image: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pfp_core", "generate", "--image", str(image), "--storyboard", STORYBOARD,
            "--seconds", str(SECONDS), "--steps", str(STEPS), "--seed", "3", "--quiet", "--out", str(out)]


def chunks_on_disk(folder: Path) -> list[Path]:
    return sorted(folder.glob("chunk_*.safetensors"))


def read_run(folder: Path, expected: set[str], video: np.ndarray | None) -> RunResult:
    """Chunk frames from `folder`, the video's frames, and the names in `folder` that are not `expected`."""
    chunks = chunks_on_disk(folder)
    frames = {path.name: load_file(str(path))["frames"].numpy().tobytes() for path in chunks}
    strays = sorted(p.name for p in folder.iterdir() if p.name not in expected | {p.name for p in chunks})
    return RunResult(frames, video, strays)


def same_run(a: RunResult, b: RunResult) -> bool:
    video_equal = a.video is None or (b.video is not None and np.array_equal(a.video, b.video))
    return a.chunk_frames == b.chunk_frames and video_equal


def wait_for(path: Path, done: Callable[[], bool], timeout: float = 300) -> bool:
    """Poll until `path` exists (every 5 ms); False if the run ended first (asked every 0.2 s: for a server that is
    an HTTP request, which must not slow the run it watches) or the timeout passed."""
    deadline, next_ask = time.time() + timeout, 0.0
    while not path.exists():
        now = time.time()
        if now > deadline:
            return False
        if now >= next_ask:
            if done():
                return False
            next_ask = now + 0.2
        time.sleep(0.005)
    return True


def run_to_end(argv: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def generation_span(folder: Path, chunks: int, done: Callable[[], bool]) -> float:
    """Seconds from a run's manifest appearing to its last chunk appearing: the stretch stops are drawn from."""
    assert wait_for(folder / "manifest.json", done)
    opened = time.time()
    assert wait_for(folder / f"chunk_{chunks - 1:04d}.safetensors", done)
    return time.time() - opened


def reference_run(folder: Path) -> tuple[RunResult, float]:
    """The uninterrupted run, and its generation span."""
    image = start_image(folder)
    out = folder / "reference.mp4"
    process = subprocess.Popen(generate_argv(image, out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    span = generation_span(folder / "reference_chunks", SECONDS, lambda: process.poll() is not None)
    _, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr.decode()
    return read_run(folder / "reference_chunks", {"manifest.json"}, read_video(out)[0]), span


def terminal_sigint() -> None:
    """In the child: Ctrl-C acts as in a terminal, even when this test runs in the background (a shell starts
    background jobs with SIGINT ignored, and the child would inherit that and never see the signal)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def interrupt_cli(folder: Path, name: str, sig: signal.Signals, delay: float, reference: RunResult) -> Interruption:
    image = start_image(folder)
    out, chunks = folder / f"{name}.mp4", folder / f"{name}_chunks"
    process = subprocess.Popen(generate_argv(image, out), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, preexec_fn=terminal_sigint)
    wait_for(chunks / "manifest.json", lambda: process.poll() is not None)
    time.sleep(delay)
    stopped = process.poll() is None
    process.send_signal(sig)
    _, stderr = process.communicate(timeout=600)
    kept = len(chunks_on_disk(chunks))
    if sig == signal.SIGINT and process.returncode == 0:
        stopped = False  # it came after the work was done: the exit ignores Ctrl-C (pfp_core/__main__.py)
    if sig == signal.SIGINT:
        exit_ok = not stopped or (process.returncode in (130, -signal.SIGINT) and "Traceback" not in stderr)
    else:
        exit_ok = not stopped or process.returncode == -sig
    resumed = run_to_end(generate_argv(image, out))
    resumed_ok = resumed.returncode == 0 and resumed_chunks(resumed.stdout) == kept
    result = read_run(chunks, {"manifest.json"}, read_video(out)[0] if resumed.returncode == 0 else None)
    strays = result.strays + sorted(p.name for p in folder.glob(f".{name}*"))  # the video's temporary
    return Interruption(sig.name, round(delay, 3), stopped, kept, exit_ok, resumed_ok,
                        resumed.returncode == 0 and same_run(reference, result), strays)


def cli_interruptions(folder: Path, signals: list[signal.Signals], count: int, seed: int = 0) -> list[Interruption]:
    """Per signal, `count` runs stopped at random moments, each resumed and compared with one uninterrupted run.
    A signal that arrives after the run already finished (load varies) is kept in the list and drawn again."""
    reference, span = reference_run(folder)
    rng = random.Random(seed)
    results = []
    for sig in signals:
        for attempt in range(3 * count):
            if sum(r.stopped for r in results if r.how == sig.name) == count:
                break
            name = f"{sig.name.lower()}_{attempt}"
            results.append(interrupt_cli(folder, name, sig, rng.uniform(0, span), reference))
    return results


def resumed_chunks(summary: str) -> int:
    """The k of '(k resumed)' or '(k resumed, ...)' in a run's summary line; -1 when there is none."""
    match = re.search(r"\((\d+) resumed\b", summary)
    return int(match.group(1)) if match else -1
