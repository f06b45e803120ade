"""Every shipped workflow against the real ComfyUI's node definitions: only core and PFP nodes, type-correct
links, widget values in range, and each UI workflow (workflows/, what the template browser lists) the same graph
as its API twin (workflows/api/, for /prompt and the batch client)."""
import json
from pathlib import Path

import pytest

from comfy_env import comfy_path, comfy_server
from workflow_format import api_problems, ui_to_api

WORKFLOWS = Path(__file__).resolve().parents[2] / "workflows"
API_FILES = sorted((WORKFLOWS / "api").glob("*_api.json"))


@pytest.fixture(scope="module")
def object_info(tmp_path_factory):
    comfy_path()
    with comfy_server(tmp_path_factory.mktemp("comfy")) as server:
        yield server.get("/object_info")


def test_the_required_workflows_are_shipped_in_pairs():
    names = {p.name for p in API_FILES}
    assert any("tiny" in n for n in names) and any("extend" in n for n in names)
    assert any("wan21_1.3b" in n for n in names) and any("wan22_5b" in n for n in names)
    for api in API_FILES:
        assert ui_twin(api).exists(), f"{api.name} has no UI twin"
    assert not list(WORKFLOWS.glob("*_api.json")), "API workflows in workflows/ would be listed as templates"


def ui_twin(api: Path) -> Path:
    return WORKFLOWS / api.name.replace("_api.json", ".json")


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_api_workflow_is_valid_for_this_comfyui(api_path, object_info):
    api = json.loads(api_path.read_text())
    assert api_problems(api, object_info) == []
    modules = {object_info[node["class_type"]]["python_module"] for node in api.values()}
    assert all(m == "nodes" or m.startswith("comfy_extras") or m.startswith("custom_nodes.pfp") or "pfp" in m
               for m in modules), modules


@pytest.mark.parametrize("api_path", API_FILES, ids=lambda p: p.stem)
def test_ui_workflow_is_the_same_graph_as_its_api_twin(api_path, object_info):
    ui = json.loads(ui_twin(api_path).read_text())
    assert ui_to_api(ui, object_info) == json.loads(api_path.read_text())
    link_ids = {link[0] for link in ui["links"]}
    assert all(s["link"] in link_ids for n in ui["nodes"] for s in n["inputs"] if s["link"] is not None)
