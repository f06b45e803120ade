"""The storyboard plan of the web timeline (POST /pfp/storyboard/plan, served by nodes/routes.py) and of the
Storyboard node, checked with the caps the command line uses (pfp_core.limits). No ComfyUI or aiohttp here, so
the request checks are tested without a server.

Body: {"storyboard": str, "global_prompt": str, "seconds": number, "fps": number, "chunk_seconds": number}, at
most limits.MAX_JSON_BYTES and limits.MAX_JSON_DEPTH deep. A body that is not such an object (bad JSON, too
large or too deep, a missing field, a wrong type, a number out of range, text over the storyboard's length cap) is
a BadRequest: one line naming the field and the fix, answered as a 400.
"""
from __future__ import annotations

import json
import re

from .. import limits
from .generator import frame_grid
from .storyboard import (ChunkPrompt, StoryboardError, check_text, format_plan, parse_storyboard, plan_chunks,
                         plan_to_json)

TEXT_FIELDS = ("storyboard", "global_prompt")
NUMBER_FIELDS = ("seconds", "fps", "chunk_seconds")
_LINE = re.compile(r"^storyboard line (\d+)\b")


class BadRequest(ValueError):
    """The request body is malformed; the message is one line naming the field and the fix."""


def is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def number_caps() -> dict[str, tuple[float, str]]:
    """(cap, unit) of each number: the command line's caps (--seconds, --chunk-seconds, --fps); the node's
    widgets stay within them."""
    return {"seconds": (limits.MAX_VIDEO_SECONDS, " s"), "fps": (limits.MAX_FPS, " fps"),
            "chunk_seconds": (limits.MAX_VIDEO_SECONDS, " s")}


def chunk_grid(seconds: float, fps: float, chunk_seconds: float) -> tuple[int, int]:
    """frame_grid for values within the caps and at most limits.MAX_CHUNKS chunks; every problem is a
    StoryboardError, reported like a storyboard mistake."""
    values = {"seconds": seconds, "fps": fps, "chunk_seconds": chunk_seconds}
    try:
        for name, (cap, unit) in number_caps().items():
            limits.check_range(name, values[name], 0, cap, unit)
        total_frames, chunk_frames = frame_grid(seconds, chunk_seconds, fps)
    except ValueError as error:
        raise StoryboardError(str(error)) from None
    if total_frames / chunk_frames > limits.MAX_CHUNKS:
        raise StoryboardError(f"seconds: {total_frames // chunk_frames:,} chunks is too many (limit "
                              f"{limits.MAX_CHUNKS:,}); use longer chunks or a shorter video")
    return total_frames, chunk_frames


def plan(storyboard: str, global_prompt: str, seconds: float, fps: float, chunk_seconds: float) -> list[ChunkPrompt]:
    total_frames, chunk_frames = chunk_grid(seconds, fps, chunk_seconds)
    return plan_chunks(parse_storyboard(storyboard, global_prompt), total_frames / fps, chunk_frames / fps)


def check_body_size(size: int) -> None:
    """Called as the body arrives (before it is all read) and again on the whole body."""
    if size > limits.MAX_JSON_BYTES:
        raise BadRequest(f"body: more than the limit of {limits.MAX_JSON_BYTES:,} bytes; send at most "
                         f"{limits.MAX_TEXT_BYTES // 4:,} characters of storyboard")


def read_body(raw: bytes) -> object:
    """The JSON document in `raw`, within the size and nesting caps."""
    check_body_size(len(raw))
    try:
        return limits.parse_json(raw, "body")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise BadRequest(f"body: not valid JSON ({error}); send a JSON object of the plan's fields") from None
    except ValueError as error:  # nested too deep (parse_json names the body), or an integer of 4,300+ digits
        message = str(error)
        raise BadRequest(message if message.startswith("body: ") else
                         f"body: not valid JSON ({message.split(';')[0]}); send numbers as plain decimals") from None


def parse_body(raw: bytes) -> dict:
    """Checked fields of a plan request, or BadRequest naming the first bad field."""
    body = read_body(raw)
    if not isinstance(body, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(body).__name__}; send an object of the plan's fields")
    values = {name: checked_field(body, name) for name in TEXT_FIELDS + NUMBER_FIELDS}
    try:
        chunk_grid(values["seconds"], values["fps"], values["chunk_seconds"])
    except StoryboardError as error:
        raise BadRequest(str(error)) from None
    return values


def checked_field(body: dict, name: str) -> str | float:
    """body[name] as text within the storyboard's length cap, or as a number (range checked by chunk_grid)."""
    if name not in body:
        raise BadRequest(f"{name}: missing; send every field of the plan")
    value = body[name]
    if name in TEXT_FIELDS:
        if not isinstance(value, str):
            raise BadRequest(f"{name}: expected text, got {type(value).__name__}; send a JSON string")
        try:
            check_text(name, value)
        except StoryboardError as error:
            raise BadRequest(str(error)) from None
        return value
    # bool is an int in Python but never a number of seconds
    if not is_number(value):
        raise BadRequest(f"{name}: expected a number, got {type(value).__name__}; send a JSON number")
    return value


def plan_response(values: dict) -> dict:
    """The JSON the timeline draws: the chunks, or the storyboard error and its line (None when it has none)."""
    try:
        chunks = plan(**values)
    except StoryboardError as error:
        message = str(error)
        match = _LINE.match(message)
        return {"error": message, "line": int(match.group(1)) if match else None}
    shared = parse_storyboard(values["storyboard"], values["global_prompt"]).global_prompt
    rows = [{**row, "label": own_prompt(row["prompt"], shared)} for row in plan_to_json(chunks)]
    return {"chunks": rows, "global_prompt": shared, "plan_text": format_plan(chunks)}


def own_prompt(prompt: str, shared: str) -> str:
    """A chunk's prompt without the global prompt in front, so timeline labels tell segments apart."""
    return prompt.removeprefix(f"{shared}, ") if shared and prompt != shared else prompt
