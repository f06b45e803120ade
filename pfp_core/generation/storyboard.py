"""Timestamped storyboards -> one prompt per generation chunk.

Syntax, one segment per line or several on one line separated by " / ":
    0s: woman stands by shelf       point: lasts until the next segment (or the end of the video)
    12.5s: woman pets cat           fractional seconds
    1:05: woman opens the door      m:ss, here 65s
    [20s-25s: woman sits down]      range: 20s to 25s ...
    [20s-25s]: woman sits down      ... same, prompt outside the brackets
    global: cinematic, 35mm         global prompt ("*: ..." too), put in front of every chunk; repeats extend it
    # a comment                     blank lines and '#' lines are ignored

Times are seconds with an "s" suffix, or m:ss (two second digits, no suffix). Since a seconds time always ends
in "s", "1:05: x" can only be 65s then the separator; "1:5: x" and "90: x" are not times. " / " splits a line
only where a timestamp (or "global:") follows, so "black / white cat" stays one prompt. Text with no timestamp
at all is one prompt from 0s, so a plain prompt works wherever a storyboard is expected; but a piece that starts
like a time and is not one ("0: x", "5sec: x", "1:5: x", "[[0s-1s: x]]") is an error naming its line, never a
prompt. Times above pfp_core.limits.MAX_VIDEO_SECONDS are refused, and a leading UTF-8 byte-order mark is dropped.
A value that names a file (or looks like a file name: one word ending in .txt or holding a '/') is read as one; a
missing file, a folder or a pipe is an error, not the prompt.

Planning: times snap to the nearest chunk boundary, ties to the later one (12.5s with 5s chunks -> 15s), so a
beat is never shown early. A start snapping to the video's end is pulled back to the last chunk and a range
keeps at least one chunk, so a line inside the video only vanishes when a later line snaps onto the same chunk
(the later wins). After a range, chunks take the global prompt alone until the next segment; with no global
prompt they keep the range's prompt, since an empty prompt gives the model nothing to generate.

Camera returns: "camera comes back" is relative to the storyboard's own pans, so planning resolves it to the way
back ("camera comes back left" after a pan right), from the seconds of "camera pans left/right" before it. The
model is trained on the same resolved captions (pfp_core.training.storyworld); left alone, the tiny DiT read no
direction from the bare words and moved on none of 17 returns given the real history (docs/results/drift_defences.md).
"""
from __future__ import annotations

import bisect
import dataclasses
import math
import numbers
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .. import limits

MAX_CHARS = 100_000
_QUOTE_CHARS = 60
_PROMPT_CHARS = 70
_EPS = 1e-9  # float slack so 10s / 1s is exactly 10 chunks and 12.5s / 5s is exactly a tie

_TIME = r"-?(?:\d+:[0-5]\d(?:\.\d+)?|\d+(?:\.\d+)?s)"  # '-' is matched only to report negative times
_POINT = re.compile(rf"({_TIME})\s*:\s*(.*)", re.I)
_RANGE = re.compile(rf"\[\s*({_TIME})\s*-\s*({_TIME})\s*(?::\s*([^\]]*)\]|\]\s*(?::\s*(.*))?)", re.I)
_GLOBAL = re.compile(r"(?:global|\*)\s*:\s*(.*)", re.I)
_TIMELIKE = re.compile(r"\[+\s*[-+]?\d|[-+]?\d\S*?\s*:")  # how a time (or a range) starts
_PATHLIKE = re.compile(r"\S*(?:[/\\]\S*|\.(?:txt|text|md|storyboard))", re.I)
_CAMERA = re.compile(r"\bcamera (?:pans (left|right)|comes back( (?:left|right))?)\b", re.I)
_SPLIT = re.compile(rf"\s+/\s+(?={_TIME}\s*:|\[\s*{_TIME}\s*-|(?:global|\*)\s*:)", re.I)


class StoryboardError(ValueError):
    """A storyboard or planning input the artist must fix; the message is one line and says how."""


@dataclass(frozen=True)
class Segment:
    start: float
    end: float | None  # None: until the next segment or the end of the video
    prompt: str  # empty only for the segment standing in for a global-prompt-only storyboard
    line: int  # 1-based storyboard line; 0 when synthesized from the global prompt


@dataclass(frozen=True)
class Storyboard:
    segments: tuple[Segment, ...]
    global_prompt: str


@dataclass(frozen=True)
class ChunkPrompt:
    index: int
    start: float
    end: float
    prompt: str
    segment_line: int | None  # None when the chunk uses the global prompt alone


def read_storyboard(value: str) -> str:
    """A storyboard file's text, or the value itself when it neither names a file nor looks like a file name.
    os.path.lexists, unlike Path.exists, does not raise on text longer than a file name may be."""
    if not (os.path.lexists(value) or (_PATHLIKE.fullmatch(value) and not _TIMELIKE.match(value))):
        return value
    try:
        data = limits.read_capped(value, "storyboard", limits.MAX_TEXT_BYTES, "give a UTF-8 text file, or the "
                                  "storyboard text itself such as '0s: a cat / 2s: a dog'")
    except ValueError as error:
        raise StoryboardError(str(error)) from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise StoryboardError(f"storyboard: {value} is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                              f"{error.start}); save it as UTF-8") from None


def parse_storyboard(text: str, global_prompt: str = "") -> Storyboard:
    """Parse storyboard text (syntax in the module docstring); global_prompt comes before any 'global:' lines."""
    check_text("storyboard", text)
    check_text("global prompt", global_prompt)
    text = text.removeprefix("\ufeff")  # a byte-order mark from an editor is not part of line 1
    if "\0" in global_prompt:
        raise StoryboardError("global prompt: contains a NUL character; remove it")
    # Whitespace is collapsed so a multi-line widget value cannot break the one-line-per-chunk table.
    globals_ = [" ".join(global_prompt.split())] if global_prompt.strip() else []
    segments: list[Segment] = []
    untimed: list[tuple[int, str]] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if "\0" in line:
            raise _line_error(number, line, "contains a NUL character; remove it")
        if not line or line.startswith("#"):
            continue
        for piece in _SPLIT.split(line):
            if match := _GLOBAL.fullmatch(piece):
                if not match.group(1).strip():
                    raise _line_error(number, piece, "global prompt is empty; write text after ':' or delete the line")
                globals_.append(match.group(1).strip())
            elif segment := _timed_segment(number, piece):
                _check_after(segments[-1] if segments else None, segment, piece)
                segments.append(segment)
            elif _TIMELIKE.match(piece):
                raise _line_error(number, piece, "does not start with a time this storyboard understands; write "
                                                 "seconds with an 's' (12s, 12.5s), m:ss (1:05) or a range "
                                                 "[20s-25s: ...]")
            else:
                untimed.append((number, piece))
    if segments and untimed:
        number, piece = untimed[0]
        raise _line_error(number, piece, "has no timestamp; start it with a time such as '12s: ...' or "
                                         "'[20s-25s: ...]', or comment it out with '#'")
    if untimed:
        segments = [Segment(0.0, None, " ".join(piece for _, piece in untimed), untimed[0][0])]
    glob = ", ".join(globals_)
    if not segments and not glob:
        raise StoryboardError("storyboard: empty; write at least one line such as '0s: a woman stands by a shelf'")
    return Storyboard(tuple(segments) or (Segment(0.0, None, "", 0),), glob)


def validate_duration(storyboard: Storyboard, total_seconds: float) -> None:
    """Reject segments that start at or after the end of the video."""
    _check_positive("seconds", total_seconds)
    for seg in storyboard.segments:
        if seg.start >= total_seconds:
            raise _line_error(seg.line, _describe(seg), f"starts at {_fmt(seg.start)}, but the video is only "
                              f"{_fmt(total_seconds)} long; lengthen the video or move the line earlier")


def plan_chunks(storyboard: Storyboard, total_seconds: float, chunk_seconds: float) -> list[ChunkPrompt]:
    """One prompt per chunk of chunk_seconds; the last chunk is shortened to end at total_seconds."""
    validate_duration(storyboard, total_seconds)
    _check_positive("chunk_seconds", chunk_seconds)
    total, step = float(total_seconds), float(chunk_seconds)
    if total / step > limits.MAX_CHUNKS:  # checked before the plan is built: its size is the chunk count
        raise StoryboardError(f"chunk_seconds: {total:g} s in chunks of {step:g} s is more than {limits.MAX_CHUNKS:,} "
                              "chunks; use longer chunks or a shorter video")
    count = max(1, math.ceil(total / step - _EPS))
    starts = [min(_snap(seg.start, step), count - 1) for seg in storyboard.segments]
    chunks = []
    for index in range(count):
        k = max(0, bisect.bisect_right(starts, index) - 1)  # latest snapped start <= chunk; else the first
        seg = storyboard.segments[k]
        after_range = seg.end is not None and index >= max(_snap(seg.end, step), starts[k] + 1)
        if after_range and storyboard.global_prompt:
            prompt, line = storyboard.global_prompt, None
        else:
            prompt = ", ".join(p for p in (storyboard.global_prompt, seg.prompt) if p)
            line = seg.line if seg.prompt else None
        end = total if index == count - 1 else (index + 1) * step
        chunks.append(ChunkPrompt(index, index * step, end, prompt, line))
    prompts = resolve_camera_returns([c.prompt for c in chunks], [c.end - c.start for c in chunks])
    return [dataclasses.replace(c, prompt=prompt) for c, prompt in zip(chunks, prompts)]


def resolve_camera_returns(prompts: list[str], seconds: list[float]) -> list[str]:
    """Each "camera comes back" given its way back ("camera comes back left" while the camera is right of where it
    started), from the seconds spent panning in each direction before it; a return moves the camera back as long."""
    offset, resolved = 0.0, []  # seconds of panning right of the start, negative when left of it
    for prompt, duration in zip(prompts, seconds):
        match = _CAMERA.search(prompt)
        if match and match.group(1):
            offset += duration if match.group(1).lower() == "right" else -duration
        elif match and abs(offset) > _EPS:
            if not match.group(2):
                prompt = f"{prompt[:match.end()]} {'left' if offset > 0 else 'right'}{prompt[match.end():]}"
            offset = math.copysign(max(0.0, abs(offset) - duration), offset)
        resolved.append(prompt)
    return resolved


def format_plan(chunks: list[ChunkPrompt]) -> str:
    """Plain-text table, one line per chunk, for the CLI."""
    return "\n".join(f"chunk {c.index:>2} {c.start:5.1f}s-{c.end:5.1f}s  {_truncate(c.prompt, _PROMPT_CHARS)}"
                     for c in chunks)


def plan_to_json(chunks: list[ChunkPrompt]) -> list[dict]:
    """JSON-ready rows for the web timeline."""
    return [dataclasses.asdict(c) for c in chunks]


def _timed_segment(number: int, piece: str) -> Segment | None:
    """The segment a piece describes, or None when it has no timestamp."""
    if match := _RANGE.fullmatch(piece):
        start, end = _seconds(match.group(1)), _seconds(match.group(2))
        prompt = match.group(3) if match.group(3) is not None else match.group(4) or ""
    elif match := _POINT.fullmatch(piece):
        start, end, prompt = _seconds(match.group(1)), None, match.group(2)
    else:
        return None
    times = [t for t in (start, end) if t is not None]
    if min(times) < 0:
        raise _line_error(number, piece, f"time {_fmt(min(times))} is negative; times start at 0s")
    if max(times) > limits.MAX_VIDEO_SECONDS:
        raise _line_error(number, piece, f"time is after {_fmt(limits.MAX_VIDEO_SECONDS)}, the longest video; "
                                         "use a time inside the video")
    if end is not None and end <= start:
        raise _line_error(number, piece, f"range ends at {_fmt(end)}, not after its start {_fmt(start)}; "
                                         "make the end later than the start")
    if not prompt.strip():
        raise _line_error(number, piece, "has no prompt; write what happens after the time, e.g. '12s: woman pets cat'")
    return Segment(start, end, prompt.strip(), number)


def _check_after(prev: Segment | None, seg: Segment, piece: str) -> None:
    if prev is None:
        return
    if seg.start <= prev.start:
        where = "before" if seg.start < prev.start else "at the same time as"
        raise _line_error(seg.line, piece, f"starts at {_fmt(seg.start)}, {where} line {prev.line} "
                                           f"({_fmt(prev.start)}); times must increase")
    if prev.end is not None and seg.start < prev.end:
        raise _line_error(seg.line, piece, f"starts at {_fmt(seg.start)}, inside the range on line {prev.line} "
                                           f"({_fmt(prev.start)}-{_fmt(prev.end)}); start it at {_fmt(prev.end)} "
                                           "or later, or end that range earlier")


def _seconds(raw: str) -> float:
    sign = -1.0 if raw.startswith("-") else 1.0
    body = raw.lstrip("-").lower()
    if body.endswith("s"):
        return sign * float(body[:-1])
    minutes, seconds = body.split(":")
    return sign * (float(minutes) * 60 + float(seconds))  # float, not int: huge minutes give inf, not OverflowError


def _snap(seconds: float, step: float) -> int:
    """Index of the nearest chunk boundary; ties go to the later boundary."""
    return math.floor(seconds / step + 0.5 + _EPS)


def check_text(name: str, value: object) -> None:
    """Prompt text a user typed or pasted: a string, not absurdly long, and valid Unicode."""
    if not isinstance(value, str):
        raise StoryboardError(f"{name}: expected text, got {type(value).__name__}")
    if len(value) > MAX_CHARS:
        raise StoryboardError(f"{name}: {len(value):,} characters is too long (limit {MAX_CHARS:,}); "
                              "shorten it or split the video")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:  # lone surrogates: bytes that were not UTF-8, carried through JSON
        raise StoryboardError(f"{name}: character {error.start + 1} is not valid Unicode (text that was not UTF-8); "
                              "re-save or re-type it as UTF-8") from None


def _check_positive(name: str, value: object) -> None:
    # numbers.Real admits numpy scalars; bool is excluded because True would silently mean 1 second.
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value) or value <= 0:
        raise StoryboardError(f"{name}: must be a positive finite number of seconds, got {value!r}")


def _line_error(line: int, text: str, problem: str) -> StoryboardError:
    quoted = _truncate(text.replace("\0", "\\0"), _QUOTE_CHARS)
    return StoryboardError(f"storyboard line {line} ('{quoted}'): {problem}")


def _describe(seg: Segment) -> str:
    if seg.end is None:
        return f"{_fmt(seg.start)}: {seg.prompt}"
    return f"[{_fmt(seg.start)}-{_fmt(seg.end)}: {seg.prompt}]"


def _fmt(seconds: float) -> str:
    return f"{seconds:.3f}".rstrip("0").rstrip(".") + "s"


def _truncate(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
