"""The command line's bad-input catalog: what a user can get wrong, and the field its one-line error must name.

Each case builds its files in a fresh folder and returns the arguments for `python -m pfp_core`. The unit tests
run the cases through cli.main in-process (cheap) and a few as real processes; the reliability bench
(tests/integration/reliability_bench.py) runs every case as a real process and writes the messages to
docs/results/reliability.md. The checks are shared: a non-zero exit, exactly one line on stderr that starts
with the error, names the field and holds no traceback, every file that existed before is byte-identical
afterwards, no temporary file is left, and no pickle payload ran.
"""
from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import io
import json
import math
import os
import pickle
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pfp_core.model.checkpoint import save_model
from pfp_core.generation.chunk_store import ChunkStore
from pfp_core.config import encoder_config_for
from pfp_core.model.encoder import MemoryEncoder
from pfp_core.generation.pipeline import DEFAULT_DIT, DEFAULT_ENCODER
from pfp_core.video_io import read_video, save_image

REPO = Path(__file__).resolve().parents[1]
PAYLOAD_MARK = "UNPICKLED"  # a pickle case's payload creates this file if anything ever unpickles it
Setup = Callable[[Path, contextlib.ExitStack], list[str]]  # (fresh folder, cleanups) -> argv


@dataclass(frozen=True)
class CliCase:
    name: str  # what the user did
    field: str | None  # what the error line must contain; None: a valid edge input that must just work
    setup: Setup
    frames: int = 0  # accepted cases: frames the video must have
    file_size_limit: int | None = None  # bytes per file (RLIMIT_FSIZE): a disk that fills up; real process only
    process: bool = False  # the unit tests run this case as a real process too


# ------------------------------------------------------------------------------------------ files the cases use

def start_image(folder: Path, height: int = 32, width: int = 32) -> Path:
    pixels = (np.indices((height, width)).sum(0) % 7 * 36).astype(np.uint8)[..., None].repeat(3, -1)
    return save_image(pixels, folder / f"start_{height}x{width}.png")


def generate(folder: Path, *extra: str) -> list[str]:
    """A 2 s, 2-chunk tiny run into folder/v.mp4 (chunks in folder/v_chunks); later flags override earlier ones."""
    return ["generate", "--image", str(start_image(folder)), "--storyboard", "0s: a cat / 1s: a dog", "--seconds", "2",
            "--steps", "2", "--quiet", "--out", str(folder / "v.mp4"), *extra]


def tiny_encoder_parts() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    with safe_open(str(DEFAULT_ENCODER), framework="pt") as f:
        return {name: f.get_tensor(name) for name in f.keys()}, f.metadata()


def encoder_with(folder: Path, name: str, config: dict | None = None,
                 edit: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    """The bundled encoder's weights with its config metadata updated by `config` and its tensors by `edit`."""
    tensors, metadata = tiny_encoder_parts()
    if edit:
        edit(tensors)
    metadata = dict(metadata, config=json.dumps({**json.loads(metadata["config"]), **(config or {})}))
    save_file(tensors, str(folder / name), metadata)
    return folder / name


def encoder_with_config_text(folder: Path, text: str) -> Path:
    tensors, metadata = tiny_encoder_parts()
    save_file(tensors, str(folder / "config_text.safetensors"), dict(metadata, config=text))
    return folder / "config_text.safetensors"


def encoder_unlike_dit(folder: Path, name: str, **changes) -> Path:
    encoder = MemoryEncoder(dataclasses.replace(encoder_config_for("tiny"), **changes))
    return save_model(encoder, encoder.config, folder / name, "memory_encoder")


class Payload:
    """Unpickling calls open(mark, 'w'): proof that nothing unpickled the file if the mark never appears."""

    def __init__(self, mark: Path):
        self.mark = mark

    def __reduce__(self):
        return open, (str(self.mark), "w")


def pickle_file(folder: Path, protocol: int) -> Path:
    path = folder / f"pickle{protocol}.safetensors"
    path.write_bytes(pickle.dumps(Payload(folder / PAYLOAD_MARK), protocol=protocol))
    return path


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def read_only_folder(path: Path, stack: contextlib.ExitStack) -> Path:
    """A folder this process cannot write to. Root ignores file modes, so root gets a read-only tmpfs mounted there."""
    path.mkdir()
    if os.geteuid() != 0:
        path.chmod(0o555)
        stack.callback(path.chmod, 0o755)
        return path
    mount(path, "ro,size=64k", stack)
    return path


def mount(path: Path, options: str, stack: contextlib.ExitStack) -> None:
    """A tmpfs at `path` (root only), unmounted by `stack`; skips where mounting is not allowed."""
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True, text=True,
                          check=False)
    if done.returncode:
        pytest.skip(f"cannot mount a tmpfs here ({done.stderr.strip()})")
    stack.callback(subprocess.run, ["umount", "-l", str(path)], check=True)


def finished_run(folder: Path, *extra: str) -> list[str]:
    """Run `generate` to the end once (in-process), so a case can start from a folder of finished chunks."""
    from pfp_core.cli import main

    argv = generate(folder, *extra)
    with contextlib.redirect_stdout(io.StringIO()):  # its summary line is not the case's output
        assert main(argv) == 0
    return argv


def interrupted_run(folder: Path) -> list[str]:
    """The state a run stopped after its first chunk leaves: manifest.json and chunk_0000 only."""
    argv = finished_run(folder)
    (folder / "v_chunks" / "chunk_0001.safetensors").unlink()
    return argv


def damaged_chunk(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    argv = finished_run(folder)
    chunk = folder / "v_chunks" / "chunk_0001.safetensors"
    chunk.write_bytes(chunk.read_bytes()[: chunk.stat().st_size // 2])
    return argv


def manifest_holding(data: bytes) -> Setup:
    def setup(folder: Path, stack: contextlib.ExitStack) -> list[str]:
        (folder / "v_chunks").mkdir()
        write(folder / "v_chunks" / "manifest.json", data)
        return generate(folder)
    return setup


def torch_zip(folder: Path) -> Path:
    torch.save({"w": torch.zeros(2)}, folder / "zip.safetensors")
    return folder / "zip.safetensors"


def set_nan(tensors: dict[str, torch.Tensor]) -> None:
    next(iter(tensors.values())).view(-1)[0] = float("nan")


def as_dtype(dtype: torch.dtype) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        name = next(iter(tensors))
        tensors[name] = tensors[name].to(dtype)
    return edit


def make_folder(path: Path) -> Path:
    path.mkdir()
    return path


# ------------------------------------------------------------------------------- files for the round-two cases

def fifo(path: Path) -> Path:
    """A named pipe: opening it for reading waits for a writer that never comes."""
    os.mkfifo(path)
    return path


def sparse(path: Path, size: int) -> Path:
    """A file of `size` bytes that takes no disk space (all zeros)."""
    with open(path, "wb") as file:
        file.truncate(size)
    return path


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


def png_header_claiming(folder: Path, width: int, height: int) -> Path:
    """A valid, tiny PNG whose header claims width x height pixels (its one IDAT row is all a decoder would need
    to start allocating the whole image)."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return write(folder / "huge.png", b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                 + chunk(b"IDAT", zlib.compress(b"\0" * (width + 1))) + chunk(b"IEND", b""))


def dit_claiming_blocks(folder: Path, blocks: int) -> Path:
    """The bundled DiT without metadata (so its config is inferred from key names) plus one key of block `blocks`."""
    with safe_open(str(DEFAULT_DIT), framework="pt") as f:
        tensors = {name: f.get_tensor(name) for name in f.keys()}
    tensors[f"blocks.{blocks - 1}.norm3.weight"] = torch.zeros(2)
    save_file(tensors, str(folder / "many_blocks.safetensors"))
    return folder / "many_blocks.safetensors"


def hold_lock(folder: Path, stack: contextlib.ExitStack) -> None:
    """What a run still going holds on its chunk folder, taken here and released when the case is over."""
    descriptor = os.open(folder, os.O_RDONLY)
    stack.callback(os.close, descriptor)
    fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)


def locked_run(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    argv = interrupted_run(folder)
    hold_lock(folder / "v_chunks", stack)
    return argv


def locked_training(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    argv = pretrained(folder, "--steps", "3")
    hold_lock(folder / "run", stack)
    return argv


def without_manifest(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    """Finished chunks of seed 0 whose manifest was deleted, run again with seed 5."""
    argv = finished_run(folder)
    (folder / "v_chunks" / "manifest.json").unlink()
    return argv + ["--seed", "5"]


def flipped_tensor_bytes(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    """Bytes flipped inside chunk 1's tensor data (its header still parses)."""
    argv = finished_run(folder)
    chunk = folder / "v_chunks" / "chunk_0001.safetensors"
    data = bytearray(chunk.read_bytes())
    data[-100:-90] = bytes(255 - b for b in data[-100:-90])
    chunk.write_bytes(bytes(data))
    return argv


def chunk_from_another_run(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    """chunk_0001 copied in from a run with another seed."""
    (folder / "other").mkdir()
    finished_run(folder / "other", "--seed", "5")
    argv = finished_run(folder)
    shutil.copy(folder / "other" / "v_chunks" / "chunk_0001.safetensors", folder / "v_chunks" / "chunk_0001.safetensors")
    return argv


def chunk_of_another_shape(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    """chunk_0001 rewritten under this run's own fingerprint with latents and frames of half the size."""
    argv = finished_run(folder)
    chunks = folder / "v_chunks"
    fingerprint = json.loads((chunks / "manifest.json").read_text())
    with ChunkStore(chunks, fingerprint) as store:
        store.save(1, torch.zeros(16, 8, 8, 8), torch.zeros(8, 16, 16, 3, dtype=torch.uint8))
    return argv


def fifo_chunk(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    argv = interrupted_run(folder)
    fifo(folder / "v_chunks" / "chunk_0001.safetensors")
    return argv


def pretrained(folder: Path, *extra: str) -> list[str]:
    """A 2-step pretrain (in-process) in folder/run, and the argv that resumes it with `extra`."""
    from pfp_core.cli import main

    argv = ["pretrain", "--out", str(folder / "run"), "--steps", "2", "--batch", "1", "--history-frames", "8", "--quiet"]
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(argv) == 0
    return argv + list(extra)


def optimizer_state_nested_deep(folder: Path, stack: contextlib.ExitStack) -> list[str]:
    """A finished pretrain whose optimizer.safetensors metadata (param_groups) is nested 100,000 deep."""
    argv = pretrained(folder, "--steps", "3")
    path = folder / "run" / "optimizer.safetensors"
    with safe_open(str(path), framework="pt") as f:
        tensors, metadata = {name: f.get_tensor(name) for name in f.keys()}, f.metadata()
    save_file(tensors, str(path), dict(metadata, param_groups=nested(100_000)))
    return argv


def workflow_file(folder: Path, text: str) -> list[str]:
    return ["queue", "--workflow", str(write(folder / "api.json", text.encode())), "--server", "127.0.0.1:9"]


def video_of_frames(folder: Path, width: int, height: int) -> Path:
    """folder/videos/wide.mov: 4 real Motion-JPEG frames of width x height (mp4v cannot encode past 8191 pixels)."""
    import cv2

    path = folder / "videos" / "wide.mov"
    path.parent.mkdir()
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"jpeg"), 8.0, (width, height))
    for level in range(4):
        writer.write(np.full((height, width, 3), 60 * level, np.uint8))
    writer.release()
    return path.parent


# -------------------------------------------------------------------------------------------------- the cases

def gen(*extra: str) -> Setup:
    return lambda folder, stack: generate(folder, *extra)


def with_file(option: str, make: Callable[[Path], Path]) -> Setup:
    return lambda folder, stack: generate(folder, option, str(make(folder)))


MALFORMED_TIMES = ["0: a cat", "0s: a cat\n5sec: a dog", "1:5: a cat", "[[0s-1s: a cat]]", "1e309s: a cat"]

CASES = [
    # model files
    CliCase("encoder is a text file named .safetensors", "encoder",
            with_file("--encoder", lambda d: write(d / "text.safetensors", b"not weights\n" * 20)), process=True),
    CliCase("encoder file cut in half", "encoder",
            with_file("--encoder", lambda d: write(d / "half.safetensors", DEFAULT_ENCODER.read_bytes()[:4000]))),
    CliCase("encoder file empty", "encoder", with_file("--encoder", lambda d: write(d / "empty.safetensors", b""))),
    CliCase("pickle renamed .safetensors (its payload would create a file)", "encoder",
            with_file("--encoder", lambda d: pickle_file(d, 2)), process=True),
    CliCase("protocol-0 pickle renamed .safetensors (no magic byte)", "encoder",
            with_file("--encoder", lambda d: pickle_file(d, 0))),
    CliCase("torch.save zip renamed .safetensors", "encoder",
            with_file("--encoder", torch_zip)),
    CliCase("encoder file missing", "encoder", gen("--encoder", "/nonexistent/encoder.safetensors")),
    CliCase("encoder width 256 for a DiT of width 128", "encoder",
            with_file("--encoder", lambda d: encoder_unlike_dit(d, "wide.safetensors", dim=256))),
    CliCase("encoder reads 48 latent channels, the DiT makes 16", "encoder",
            with_file("--encoder", lambda d: encoder_unlike_dit(d, "deep.safetensors", in_channels=48))),
    CliCase("encoder rate metadata unreadable ('4x4')", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "rate44.safetensors", {"rate": "4x4"}))),
    CliCase("encoder rate metadata 4x4x2 on 2x2x2 weights", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "rate442.safetensors", {"rate": "4x4x2"}))),
    CliCase("encoder weights hold NaN", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "nan.safetensors", edit=set_nan))),
    CliCase("DiT file given as the encoder", "encoder", gen("--encoder", str(DEFAULT_DIT))),
    CliCase("encoder file given as the DiT", "dit", gen("--dit", str(DEFAULT_ENCODER))),
    # start image
    CliCase("start image is not an image", "image",
            lambda d, s: generate(d, "--image", str(write(d / "notes.png", b"hello")))),
    CliCase("start image is a folder", "image", lambda d, s: generate(d, "--image", str(d))),
    CliCase("start image missing", "image", gen("--image", "/nonexistent/start.png")),
    # numbers
    CliCase("zero seconds", "--seconds", gen("--seconds", "0")),
    CliCase("negative seconds", "--seconds", gen("--seconds=-3")),
    CliCase("NaN seconds", "--seconds", gen("--seconds", "nan"), process=True),
    CliCase("cfg 31 (above 30)", "cfg", gen("--cfg", "31")),
    CliCase("NaN cfg", "cfg", gen("--cfg", "nan")),
    CliCase("5000 steps (above 1000)", "steps", gen("--steps", "5000")),
    CliCase("zero steps", "--steps", gen("--steps", "0")),
    CliCase("history shorter than one frame (0.01 s)", "history_seconds", gen("--history-seconds", "0.01")),
    # storyboard
    CliCase("storyboard times out of order", "storyboard line", gen("--storyboard", "0s: a cat\n1.5s: a dog\n1s: a bird")),
    CliCase("storyboard range overlaps the next line", "storyboard line",
            gen("--storyboard", "[0s-1.5s: a cat]\n1s: a dog")),
    CliCase("storyboard line after the end of the video", "storyboard line",
            gen("--storyboard", "0s: a cat\n5s: a dog")),
    CliCase("empty storyboard", "storyboard", gen("--storyboard", "")),
    CliCase("storyboard file in Latin-1, not UTF-8", "storyboard",
            lambda d, s: generate(d, "--storyboard", str(write(d / "story.txt", "0s: un café".encode("latin-1"))))),
    CliCase("storyboard file of 200,000 characters", "storyboard",
            lambda d, s: generate(d, "--storyboard", str(write(d / "long.txt", b"0s: " + b"a cat " * 33_334)))),
    CliCase("global prompt of 120,000 characters", "global prompt", gen("--global-prompt", "a " * 60_000)),
    # output
    CliCase("--out is not an .mp4", "out", lambda d, s: generate(d, "--out", str(d / "v.txt"))),
    CliCase("output folder not writable", "out",
            lambda d, s: generate(d, "--out", str(read_only_folder(d / "locked", s) / "v.mp4"))),
    CliCase("disk full while writing a chunk (files capped at 100 kB)", "out",
            lambda d, s: interrupted_run(d), file_size_limit=100_000),
    CliCase("chunk folder holds another run (other seed)", "out", lambda d, s: finished_run(d) + ["--seed", "5"]),
    CliCase("finished chunk file damaged", "out", damaged_chunk),
    CliCase("chunk folder manifest damaged", "out", manifest_holding(b'{"weights": "ab')),
    # plan
    CliCase("plan: unknown model name", "model", lambda d, s: ["plan", "--model", "wan9"]),
    CliCase("plan: rate not HxWxT", "rate", lambda d, s: ["plan", "--model", "tiny", "--rate", "4x4"]),
    CliCase("plan: width not a multiple of 16 for Wan 2.1", "width",
            lambda d, s: ["plan", "--model", "wan2.1-1.3b", "--width", "830"]),
    # round two (issue 12): 1 a failed final write
    CliCase("disk full at the final mp4 write (a good mp4 from an earlier run is there)", "out",
            lambda d, s: finished_run(d), file_size_limit=4_000, process=True),
    CliCase("disk full while pretrain writes its first checkpoint", "cannot write",
            lambda d, s: ["pretrain", "--out", str(d / "run"), "--steps", "1", "--batch", "1", "--history-frames", "8",
                          "--quiet"], file_size_limit=100_000, process=True),
    # 2 chunks that do not belong to this run, or were changed
    CliCase("manifest deleted, rerun with another seed", "chunk_0000", without_manifest),
    CliCase("bytes flipped inside a chunk's tensor data", "chunk_0001", flipped_tensor_bytes),
    CliCase("chunk copied in from another run", "chunk_0001", chunk_from_another_run),
    CliCase("chunk of another shape under this run's fingerprint", "chunk_0001", chunk_of_another_shape),
    # 3 two runs on one folder
    CliCase("chunk folder in use by a run still going", "out", locked_run),
    CliCase("training folder in use by a training still going", "out", locked_training),
    # 4 cost before checks
    CliCase("a billion seconds", "--seconds", gen("--seconds", "1e9")),
    CliCase("queue: 100,000 seeds x 2 storyboards", "--seeds",
            lambda d, s: workflow_file(d, '{"1": {"class_type": "X", "inputs": {"seed": 1, "storyboard": ""}}}')
            + ["--count", "100000", "--storyboard", "0s: a", "0s: b"]),
    CliCase("start image whose header claims 30000x30000 pixels", "image",
            with_file("--image", lambda d: png_header_claiming(d, 30000, 30000))),
    CliCase("storyboard file of 64 MiB (sparse; 1 GiB was read whole before)", "storyboard",
            with_file("--storyboard", lambda d: sparse(d / "story.txt", 2**26))),
    CliCase("DiT whose key names claim 10^7 blocks", "dit",
            with_file("--dit", lambda d: dit_claiming_blocks(d, 10**7))),
    CliCase("an hour in chunks of one frame (28,800 chunks)", "chunk_seconds",
            gen("--seconds", "3600", "--chunk-seconds", "1e-300")),
    # 5 values near float max, deep JSON, nonsense metadata, huge non-images
    CliCase("seconds 1e308", "--seconds", gen("--seconds", "1e308")),
    CliCase("plan: fps 1e308", "--fps", lambda d, s: ["plan", "--model", "tiny", "--fps", "1e308"]),
    CliCase("storyboard range ending near float max", "storyboard line",
            gen("--storyboard", "[0s-" + "9" * 308 + "s: a cat]")),
    CliCase("chunk folder manifest nested 100,000 deep", "out", manifest_holding(nested(100_000).encode())),
    CliCase("encoder config metadata nested 100,000 deep", "encoder",
            with_file("--encoder", lambda d: encoder_with_config_text(d, nested(100_000)))),
    CliCase("training resumed from optimizer metadata nested 100,000 deep", "out", optimizer_state_nested_deep),
    CliCase("queue: --workflow nested 100,000 deep", "--workflow", lambda d, s: workflow_file(d, nested(100_000))),
    CliCase("queue: --set value nested 30,000 deep (argv holds at most 128 kB)", "--set",
            lambda d, s: workflow_file(d, '{"1": {"class_type": "X", "inputs": {"a": 1}}}') + ["--set", "1.a=" + nested(30_000)]),
    CliCase("encoder metadata: 3 heads for width 32", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "heads3.safetensors", {"attn_heads": 3}))),
    CliCase("encoder metadata: width 10^6 (would allocate terabytes)", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "wide6.safetensors", {"width": 10**6}))),
    CliCase("encoder metadata: dim is the text \"128\"", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "dimtext.safetensors", {"dim": "128"}))),
    CliCase("encoder metadata: rate 99999x4x2", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "rate_huge.safetensors", {"rate": "99999x4x2"}))),
    CliCase("pretrain --data holding a video of 8208x16 frames (the cap is 8192 per side)", "--data",
            lambda d, s: ["pretrain", "--data", str(video_of_frames(d, 8208, 16)), "--out", str(d / "run"), "--quiet"]),
    CliCase("pretrain --rate with 5000 digits", "--rate",
            lambda d, s: ["pretrain", "--out", str(d / "run"), "--rate", "9" * 5000 + "x1x1"]),
    CliCase("a 300 MiB file that is not an image (sparse; 3 GiB were read whole before)", "image",
            with_file("--image", lambda d: sparse(d / "big.png", 300 * 2**20))),
    # 6 diverging training, training values
    CliCase("pretrain --lr 1e30 resumed on a good folder", "lr", lambda d, s: pretrained(d, "--steps", "5", "--lr", "1e30")),
    CliCase("pretrain resumed with another --rate", "out", lambda d, s: pretrained(d, "--steps", "3", "--rate", "2x2x2")),
    CliCase("pretrain resumed with --no-memory on a folder trained with memory", "out",
            lambda d, s: pretrained(d, "--steps", "3", "--no-memory")),
    CliCase("finetune --retrieval-mix nan", "--retrieval-mix",
            lambda d, s: ["finetune", "--out", str(d / "run"), "--retrieval-mix", "nan"]),
    CliCase("finetune --context-window -5", "--context-window",
            lambda d, s: ["finetune", "--out", str(d / "run"), "--context-window=-5"]),
    # 7 special files
    CliCase("start image is a FIFO", "image", with_file("--image", lambda d: fifo(d / "pipe.png")), process=True),
    CliCase("chunk file is a FIFO", "chunk_0001", fifo_chunk),
    # 8 storyboards that meant something else
    CliCase("mistyped storyboard file name", "storyboard", gen("--storyboard", "stroy.txt")),
    CliCase("storyboard is a folder", "storyboard", lambda d, s: generate(d, "--storyboard", str(d))),
    *(CliCase(f"storyboard with a malformed time: {text!r}", f"storyboard line {text.count(chr(10)) + 1}",
              gen("--storyboard", text)) for text in MALFORMED_TIMES),
    # 9 weights that are not floating point
    CliCase("encoder weights stored as int8", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "int8.safetensors", edit=as_dtype(torch.int8)))),
    CliCase("encoder weights stored as bool", "encoder",
            with_file("--encoder", lambda d: encoder_with(d, "bool.safetensors", edit=as_dtype(torch.bool)))),
    # 10 paths OpenCV cannot take
    CliCase("--out holds bytes that are not UTF-8", "out",
            lambda d, s: generate(d, "--out", os.fsdecode(bytes(d) + b"/v\xff.mp4")), process=True),
    # 12 seeds that would wrap
    CliCase("seed 2^63", "--seed", gen("--seed", str(2**63))),
    # 13 messages
    CliCase("--out is a folder named v.mp4", "out", lambda d, s: generate(d, "--out", str(make_folder(d / "v.mp4")))),
    CliCase("pretrain --out is a file", "out",
            lambda d, s: ["pretrain", "--out", str(write(d / "notes.txt", b"x")), "--steps", "1"]),
    CliCase("eval-retrieval --png is a folder", "png", lambda d, s: ["eval-retrieval", "--png", str(d)]),
    CliCase("queue: --server with a 300-character host name", "--server",
            lambda d, s: workflow_file(d, '{"1": {"class_type": "X", "inputs": {}}}')[:3] + ["--server", "a" * 300 + ":80"]),
    CliCase("queue: --workflow is a folder", "--workflow", lambda d, s: ["queue", "--workflow", str(d), "--server", "1:2"]),
    CliCase("eval-retrieval --history-frames 1", "history-frames",
            lambda d, s: ["eval-retrieval", "--history-frames", "1"]),
    CliCase("--seconds 0.0001 (no frame after the start)", "seconds: 0.0001", gen("--seconds", "0.0001")),
]

ACCEPTED = [
    CliCase("1x1 start image", None, lambda d, s: generate(d, "--image", str(start_image(d, 1, 1))), frames=16),
    CliCase("odd 33x17 start image", None, lambda d, s: generate(d, "--image", str(start_image(d, 33, 17))), frames=16),
    CliCase("chunk longer than the video (5 s chunks, 1 s video)", None,
            gen("--storyboard", "0s: a cat", "--seconds", "1", "--chunk-seconds", "5"), frames=8),
    CliCase("history longer than the video (1000 s)", None, gen("--history-seconds", "1000"), frames=16),
    CliCase("storyboard file starting with a UTF-8 byte-order mark", None,
            lambda d, s: generate(d, "--storyboard", str(write(d / "bom.txt", "\ufeff0s: a cat\n1s: a dog".encode()))),
            frames=16),
    CliCase("largest seed (2^63 - 1)", None, gen("--seed", str(2**63 - 1)), frames=16),
]


# ------------------------------------------------- the web timeline's route (POST /pfp/storyboard/plan)

def plan_body(**changes: object) -> dict:
    """A valid plan request with `changes`."""
    return {"storyboard": "0s: a cat", "global_prompt": "", "seconds": 20.0, "fps": 16.0, "chunk_seconds": 5.0,
            **changes}


def plan_bytes(**changes: object) -> bytes:
    return json.dumps(plan_body(**changes)).encode()


@dataclass(frozen=True)
class RouteCase:
    name: str
    body: bytes
    field: str  # the 400's one-line error starts with "FIELD:"


ROUTE_CASES = [
    RouteCase("not JSON", b"{not json", "body"),
    RouteCase("a list, not an object", b"[1, 2]", "body"),
    RouteCase("bytes that are not UTF-8", b'{"storyboard": "\xff\xfe"}', "body"),
    RouteCase("fps missing", json.dumps({k: v for k, v in plan_body().items() if k != "fps"}).encode(), "fps"),
    RouteCase("storyboard is a number", plan_bytes(storyboard=7), "storyboard"),
    RouteCase("seconds is text", plan_bytes(seconds="20"), "seconds"),
    RouteCase("chunk_seconds is true", plan_bytes(chunk_seconds=True), "chunk_seconds"),
    RouteCase("seconds NaN", plan_bytes(seconds=math.nan), "seconds"),
    RouteCase("fps Infinity", plan_bytes(fps=math.inf), "fps"),
    RouteCase("fps 0", plan_bytes(fps=0), "fps"),
    RouteCase("seconds 1e308", plan_bytes(seconds=1e308), "seconds"),
    RouteCase("seconds 3601 (above the hour the command line allows)", plan_bytes(seconds=3601), "seconds"),
    RouteCase("fps 241 (above the command line's 240)", plan_bytes(fps=241), "fps"),
    RouteCase("fps 10^400 (an integer no float holds)", plan_bytes(fps=10**400), "fps"),
    RouteCase("chunk_seconds -1", plan_bytes(chunk_seconds=-1), "chunk_seconds"),
    RouteCase("chunk_seconds 7200", plan_bytes(chunk_seconds=7200), "chunk_seconds"),
    RouteCase("an hour in chunks of 0.1 s (36,000 chunks)", plan_bytes(seconds=3600, chunk_seconds=0.1), "seconds"),
    RouteCase("a number of 5000 digits", b'{"seconds": 1' + b"0" * 5000 + b"}", "body"),
    RouteCase("nested 100,000 deep", b'{"storyboard": ' + nested(100_000).encode() + b"}", "body"),
    RouteCase("nested 65 deep", b'{"storyboard": ' + nested(65).encode() + b"}", "body"),
    RouteCase("storyboard of 100,001 characters", plan_bytes(storyboard="0s: " + "a" * 99_997), "storyboard"),
    RouteCase("global prompt of 120,000 characters", plan_bytes(global_prompt="a " * 60_000), "global_prompt"),
    RouteCase("64 MiB of spaces after the object", plan_bytes() + b" " * 2**26, "body"),
]


# ------------------------------------------------------------------------------------------- running and checks

def run_in_process(argv: list[str], capfd) -> tuple[int, str]:
    from pfp_core.cli import main

    try:
        code = main(argv)
    except SystemExit as exit_info:  # argparse errors
        code = exit_info.code
    return code, capfd.readouterr().err


def run_process(argv: list[str], file_size_limit: int | None = None) -> tuple[int, str]:
    def limit() -> None:  # in the child: every file it writes is capped, like a disk with that much room
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_size_limit, file_size_limit))

    done = subprocess.run([sys.executable, "-m", "pfp_core", *argv], cwd=REPO, capture_output=True, text=True,
                          timeout=600, preexec_fn=limit if file_size_limit else None, check=False)
    return done.returncode, done.stderr


def snapshot(folder: Path) -> dict[str, str]:
    """sha1 of every regular file, streamed: some cases hold sparse files of hundreds of MB."""
    def digest(path: Path) -> str:
        with open(path, "rb") as file:
            return hashlib.file_digest(file, "sha1").hexdigest()
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def check_outcome(case: CliCase, folder: Path, before: dict[str, str], code: int, stderr: str) -> str:
    """Assert what every case promises; returns the error line (or a one-line summary for accepted cases)."""
    after = snapshot(folder)
    assert not (folder / PAYLOAD_MARK).exists(), "a pickle payload ran"
    assert {name: after.get(name) for name in before} == before, "a file that existed before changed or vanished"
    assert not [name for name in after if ".tmp" in name], f"temporary files left: {sorted(after)}"
    if case.field is None:
        assert code == 0, stderr
        frames, _ = read_video(folder / "v.mp4")
        assert len(frames) == case.frames
        return f"accepted: {len(frames)} frames"
    lines = stderr.strip().splitlines()
    assert code not in (0, None) and "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    assert "error: " in lines[0] and case.field in lines[0], lines[0]
    return lines[0]
