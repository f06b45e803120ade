"""HTTP route for the web timeline (web/storyboard_timeline.js): POST /pfp/storyboard/plan.

The body and the answers are described in pfp_core/generation/plan_request.py: 200 {"chunks": [...], "global_prompt": "...",
"plan_text": "..."} with exactly the plan the Storyboard node will use (same `plan` function), 200 {"error": ...,
"line": N or null} when the storyboard needs fixing, and 400 {"error": ...} naming the field for a body that is not
a plan request (bad or too deep JSON, too large, a missing or mistyped field, a number out of range, text too long).
The body is read in pieces and refused as soon as it passes the size cap, before all of it is held.
"""
from __future__ import annotations

from aiohttp import web

from ..pfp_core.generation.plan_request import BadRequest, check_body_size, parse_body, plan_response

PATH = "/pfp/storyboard/plan"
_registered = False


async def read_request_body(request: web.Request) -> bytes:
    """The body, or BadRequest once it is larger than the cap (by its Content-Length, or as it arrives)."""
    check_body_size(request.content_length or 0)
    pieces, size = [], 0
    async for piece in request.content.iter_chunked(2**16):
        size += len(piece)
        check_body_size(size)
        pieces.append(piece)
    return b"".join(pieces)


async def plan_handler(request: web.Request) -> web.Response:
    try:
        values = parse_body(await read_request_body(request))
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
