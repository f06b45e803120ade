"""HTTP route for the web timeline (web/storyboard_timeline.js): POST /pfp/storyboard/plan.

Body: {"storyboard": str, "global_prompt": str, "seconds": number, "fps": number, "chunk_seconds": number}.
Answers 200 {"chunks": [...], "global_prompt": "...", "plan_text": "..."} with exactly the plan the Storyboard node
will use (same `plan` function; each chunk also has `label`, its prompt without the global prompt), or 200
{"error": "<one-line message>", "line": N or null} when the storyboard needs fixing.
A body that is not such an object (bad JSON, missing field, wrong type) is a 400 {"error": ...} naming the field.
"""
from __future__ import annotations

import json
import math
import re

from aiohttp import web

from ..pfp_core.storyboard import StoryboardError, format_plan, parse_storyboard, plan_to_json
from .storyboard_node import chunk_grid, is_number, plan

PATH = "/pfp/storyboard/plan"
TEXT_FIELDS = ("storyboard", "global_prompt")
NUMBER_FIELDS = ("seconds", "fps", "chunk_seconds")
_LINE = re.compile(r"^storyboard line (\d+)\b")
_registered = False


class BadRequest(ValueError):
    """The request body is malformed; the message is one line naming the field."""


def parse_body(body: object) -> dict:
    """Checked fields of a plan request, or BadRequest naming the first bad field."""
    if not isinstance(body, dict):
        raise BadRequest(f"body: expected a JSON object, got {type(body).__name__}")
    values = {}
    for name in TEXT_FIELDS + NUMBER_FIELDS:
        if name not in body:
            raise BadRequest(f"{name}: missing")
        value = body[name]
        if name in TEXT_FIELDS and not isinstance(value, str):
            raise BadRequest(f"{name}: expected text, got {type(value).__name__}")
        if name in NUMBER_FIELDS:
            # bool is an int in Python but never a number of seconds; json.loads accepts NaN/Infinity, so check.
            if not is_number(value):
                raise BadRequest(f"{name}: expected a number, got {type(value).__name__}")
            if not math.isfinite(value):
                raise BadRequest(f"{name}: expected a finite number, got {value}")
            value = float(value)
        values[name] = value
    try:
        chunk_grid(values["seconds"], values["fps"], values["chunk_seconds"])
    except StoryboardError as error:
        raise BadRequest(str(error)) from None
    return values


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


async def plan_handler(request: web.Request) -> web.Response:
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return web.json_response({"error": "body: not valid JSON"}, status=400)
    try:
        values = parse_body(body)
    except BadRequest as error:
        return web.json_response({"error": str(error)}, status=400)
    return web.json_response(plan_response(values))


def register_routes() -> None:
    """Add the route to ComfyUI's server once (it is called while the pack loads, before the app starts)."""
    global _registered
    if _registered:
        return
    from server import PromptServer  # only inside ComfyUI; importing this module stays side-effect free

    PromptServer.instance.routes.post(PATH)(plan_handler)
    _registered = True
