"""Checks shipped workflows against a live ComfyUI's /object_info: node types, link types, widget ranges, and that
each UI-format workflow is the same graph as its API-format twin."""
from __future__ import annotations

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
# combos listing the user's own files: their options depend on the machine, not on the workflow
FILE_COMBOS = {"unet_name", "clip_name", "vae_name", "image", "file", "encoder_name"}


def input_specs(node_info: dict) -> list[tuple[str, list]]:
    order = node_info.get("input_order", {})
    return [(name, node_info["input"][group][name]) for group in ("required", "optional") for name in order.get(group, [])]


def is_widget(spec: list) -> bool:
    return isinstance(spec[0], list) or spec[0] in WIDGET_TYPES


# the front end gives these INT inputs a control_after_generate widget even when the node does not ask for one
LEGACY_SEEDS = {"seed", "noise_seed"}


def has_control(name: str, spec: list) -> bool:
    return bool(len(spec) > 1 and spec[1].get("control_after_generate")) or (spec[0] == "INT" and name in LEGACY_SEEDS)


def widget_names(node_info: dict) -> list[tuple[str, bool]]:
    """(name, has a control_after_generate value after it) in the order the front end stores widgets_values."""
    return [(name, has_control(name, spec)) for name, spec in input_specs(node_info) if is_widget(spec)]


def ui_to_api(ui: dict, info: dict) -> dict:
    links = {link[0]: link for link in ui["links"]}
    api = {}
    for node in ui["nodes"]:
        inputs = {}
        for socket in node.get("inputs", []):
            if socket.get("link") is not None:
                _, source, slot, *_ = links[socket["link"]]
                inputs[socket["name"]] = [str(source), slot]
        values = iter(node.get("widgets_values", []))
        for name, has_control in widget_names(info[node["type"]]):
            if name not in inputs:
                inputs[name] = next(values)
                if has_control:
                    next(values)
        api[str(node["id"])] = {"class_type": node["type"], "inputs": inputs}
    return api


def widget_problem(name: str, spec: list, value) -> str | None:
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    choices = kind if isinstance(kind, list) else options.get("options")
    if choices is not None:
        return None if name in FILE_COMBOS or value in choices else f"{value!r} not in {choices[:6]}"
    if kind in ("INT", "FLOAT"):
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            return f"{value!r} is not a number"
        if value < options.get("min", float("-inf")) or value > options.get("max", float("inf")):
            return f"{value} outside [{options.get('min')}, {options.get('max')}]"
    if kind == "STRING" and not isinstance(value, str):
        return f"{value!r} is not text"
    if kind == "BOOLEAN" and not isinstance(value, bool):
        return f"{value!r} is not a boolean"
    return None


def api_problems(api: dict, info: dict) -> list[str]:
    problems = []
    for node_id, node in api.items():
        node_info = info.get(node["class_type"])
        if node_info is None:
            problems.append(f"node {node_id}: unknown type {node['class_type']}")
            continue
        specs = dict(input_specs(node_info))
        required = node_info["input"].get("required", {})
        problems += [f"node {node_id}: missing input {name}" for name in required if name not in node["inputs"]]
        for name, value in node["inputs"].items():
            if name not in specs:
                problems.append(f"node {node_id}: unknown input {name}")
            elif isinstance(value, list):
                problems += link_problem(api, info, node_id, name, specs[name], value)
            elif (problem := widget_problem(name, specs[name], value)) is not None:
                problems.append(f"node {node_id} ({node['class_type']}).{name}: {problem}")
    return problems


def link_problem(api: dict, info: dict, node_id: str, name: str, spec: list, value: list) -> list[str]:
    source_id, slot = value
    if source_id not in api:
        return [f"node {node_id}.{name}: links to missing node {source_id}"]
    outputs = info[api[source_id]["class_type"]]["output"]
    if slot >= len(outputs):
        return [f"node {node_id}.{name}: node {source_id} has no output {slot}"]
    expected = "COMBO" if isinstance(spec[0], list) else spec[0]
    if outputs[slot] != expected and "*" not in (outputs[slot], expected):
        return [f"node {node_id}.{name}: expects {expected}, node {source_id} gives {outputs[slot]}"]
    return []
