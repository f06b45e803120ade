"""The prompt being validated, so a node can check its widget values together while reporting on one input.

ComfyUI files a validation message under every input validate_inputs takes; the Storyboard node takes only
`storyboard` and reads the other values here. An on-prompt handler stores the prompt in a context variable of the
request's task, which then validates it, so concurrent requests never see each other's prompt.
"""
from __future__ import annotations

from contextvars import ContextVar

_prompt: ContextVar[dict] = ContextVar("pfp_prompt", default={})
_registered = False


def remember_prompt(json_data: dict) -> dict:
    prompt = json_data.get("prompt") if isinstance(json_data, dict) else None
    _prompt.set(prompt if isinstance(prompt, dict) else {})
    return json_data


def node_inputs(unique_id: str | None) -> dict:
    """The raw inputs of node `unique_id` in the prompt being validated; {} when unknown."""
    node = _prompt.get().get(str(unique_id))
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return inputs if isinstance(inputs, dict) else {}


def register_prompt_handler() -> None:
    global _registered
    if _registered:
        return
    from server import PromptServer  # only inside ComfyUI

    PromptServer.instance.add_on_prompt_handler(remember_prompt)
    _registered = True
