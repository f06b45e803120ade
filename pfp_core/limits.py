"""Caps on what one run may ask for, checked before anything is allocated or read, and shared by the command line
and the ComfyUI nodes. Each check raises a one-line ValueError that names the field and the fix. No torch here, so
the front ends can import it cheaply."""
from __future__ import annotations

import json
import math
import os
import stat
from pathlib import Path

MAX_VIDEO_SECONDS = 3600.0  # one hour; also the cap on chunk and history lengths and on storyboard times
MAX_CHUNKS = 10_000  # chunks in one video
MAX_FPS = 240.0
MAX_SIDE = 8192  # pixels per side of a video or of a start image (read from its header before decoding)
MAX_IMAGE_BYTES = 256 * 2**20
MAX_TEXT_BYTES = 4 * 100_000  # a storyboard file: 100,000 characters of up to 4 UTF-8 bytes
MAX_JSON_BYTES = 64 * 2**20  # a workflow, manifest or metadata document
MAX_JSON_DEPTH = 64  # nesting of lists and objects; real workflows and metadata use fewer than 10
MAX_JOBS = 10_000  # prompts one queue command plans (seeds x storyboards) ...
MAX_QUEUE_BYTES = 2**30  # ... and their workflow copies together, in bytes of JSON
MAX_SEED = 2**63 - 1  # chunk noise seeds are taken modulo 2**63: larger seeds would repeat smaller ones
MAX_LAYERS = 256  # transformer blocks in a DiT or encoder (Wan 14B has 40)
MAX_RATE = 64  # compression factor per axis of a memory rate HxWxT (the paper's largest is 8)
MAX_WIDTH = 16_384  # model width, FFN width, heads, channels and text length (Wan 14B: dim 5120, ffn 13824)
MAX_RECENT_FRAMES = 1024  # latent frames given uncompressed beside the memory (the tiny pair uses 2, Wan 1)


def check_range(field: str, value: float, low: float, high: float, unit: str = "") -> float:
    """`value` if low < value <= high and finite (low itself is refused: every capped quantity must be positive)."""
    # a huge int is compared as it is: math.isfinite would raise OverflowError converting it to float
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)) or not low < value <= high:
        raise ValueError(f"{field}: {shown(repr(value))} is out of range; use a number above {low:g} and at most "
                         f"{high:g}{unit}")
    return value


def shown(text: str, limit: int = 40) -> str:
    """A value as it goes into an error line: cut to `limit` characters (a number of thousands of digits stays
    one short line)."""
    return text if len(text) <= limit else text[: limit - 1] + "…"


def check_seed(field: str, seed: object) -> int:
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise ValueError(f"{field}: {seed!r} is out of range; use a whole number from 0 to {MAX_SEED} (2^63 - 1)")
    return seed


def regular_file(path: str | Path, field: str, max_bytes: int, fix: str) -> int:
    """The size of `path` if it is a regular file of at most max_bytes; a FIFO, device or folder is refused before
    anything opens it (opening a FIFO waits for a writer forever). `fix` says what to give instead."""
    try:
        info = os.stat(path)
    except OSError as error:
        raise ValueError(f"{field}: cannot read '{path}' ({error.strerror or type(error).__name__}); {fix}") from None
    if stat.S_ISDIR(info.st_mode):
        raise ValueError(f"{field}: '{path}' is a folder, not a file; {fix}")
    if not stat.S_ISREG(info.st_mode):
        raise ValueError(f"{field}: '{path}' is not a regular file (a pipe, socket or device); {fix}")
    if info.st_size > max_bytes:
        raise ValueError(f"{field}: '{path}' is {info.st_size:,} bytes, more than the limit of {max_bytes:,}; {fix}")
    return info.st_size


def read_capped(path: str | Path, field: str, max_bytes: int, fix: str) -> bytes:
    """A regular file's bytes, never more than max_bytes (a file that grows while read is cut off and refused)."""
    regular_file(path, field, max_bytes, fix)
    with open(path, "rb") as file:
        data = file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise ValueError(f"{field}: '{path}' is more than the limit of {max_bytes:,} bytes; {fix}")
    return data


def parse_json(text: str | bytes, field: str):
    """json.loads with caps on size and nesting, so a hostile document costs one line, not a RecursionError."""
    if len(text) > MAX_JSON_BYTES:
        raise ValueError(f"{field}: {len(text):,} bytes of JSON is more than the limit of {MAX_JSON_BYTES:,}")
    try:
        value = json.loads(text)
    except RecursionError:
        value = None
    else:
        if json_depth(value) <= MAX_JSON_DEPTH:
            return value
    raise ValueError(f"{field}: JSON nested more than {MAX_JSON_DEPTH} levels deep; flatten it or use another file")


def json_depth(value: object) -> int:
    """Nesting depth of lists and objects, measured without recursion."""
    deepest, pending = 0, [(value, 1)]
    while pending:
        item, depth = pending.pop()
        if isinstance(item, (list, dict)):
            deepest = max(deepest, depth)
            pending.extend((child, depth + 1) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def check_utf8_path(path: str | Path, field: str) -> Path:
    """Paths go to OpenCV and safetensors as UTF-8; a name holding other bytes (arrived via surrogateescape) is
    refused before any work, since OpenCV crashes on it."""
    try:
        str(path).encode("utf-8")
    except UnicodeEncodeError as error:
        raise ValueError(f"{field}: the path holds bytes that are not UTF-8 (character {error.start + 1} of "
                         f"'{os.fsencode(path).decode('utf-8', 'backslashreplace')}'); rename it or pick another path"
                         ) from None
    return Path(path)


def output_file(path: str | Path, field: str) -> Path:
    """A path a file will be written to: refused when a folder (or anything but a file) already has that name."""
    if os.path.lexists(path) and not os.path.isfile(path):
        raise ValueError(f"{field}: '{path}' is a folder or special file; give the name of a file to write")
    return check_utf8_path(path, field)


def output_folder(path: str | Path, field: str) -> Path:
    """A folder files will be written into: refused when a file already has that name."""
    if os.path.lexists(path) and not os.path.isdir(path):
        raise ValueError(f"{field}: '{path}' is a file, not a folder; give a folder name")
    return check_utf8_path(path, field)
