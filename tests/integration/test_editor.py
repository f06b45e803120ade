"""The pack in ComfyUI's real graph editor (headless Chromium driven by Playwright, tests/integration/editor.cjs):
every workflow file and every PFP template opens readable, without an alert, a console error or overlapping
nodes, and queues exactly its API twin; editing the storyboard and the seed and running again starts a new run,
the saved settings resume, and a video lands in output. Skipped, saying why, without chromium, node or
playwright-core (found through NODE_PATH)."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

from comfy_env import API_WORKFLOWS, REPO, WORKFLOWS, comfy_path, comfy_server

from pfp_core.video_io import save_image, write_video

SCRIPT = Path(__file__).with_name("editor.cjs")
CHROMIUM = Path("/usr/bin/chromium")
UI_FILES = sorted(WORKFLOWS.glob("*.json"))


def browser_missing() -> str | None:
    node = shutil.which("node")
    if not CHROMIUM.exists() or node is None:
        return f"needs {CHROMIUM} and node on PATH"
    found = subprocess.run([node, "-e", "require.resolve('playwright-core')"], capture_output=True, env=os.environ)
    return None if found.returncode == 0 else "needs playwright-core (npm install playwright-core; NODE_PATH=.../node_modules)"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    comfy_path()
    if (reason := browser_missing()) is not None:
        pytest.skip(f"the editor tests {reason}")
    with comfy_server(tmp_path_factory.mktemp("comfy")) as running:
        inputs = running.output.parent / "input"  # what the Wan workflows' loaders name, so no preview 404s
        save_image(np.full((480, 832, 3), 128, np.uint8), inputs / "start_frame.png")
        write_video(np.full((9, 480, 832, 3), 128, np.uint8), inputs / "existing_clip.mp4", 16.0)
        running.post("/settings/Comfy.TutorialCompleted", True)  # else the template browser opens over the canvas
        # Front end 1.27.10 on a fresh user folder: registering Comfy.Canvas.NavigationMode sets these two before
        # they exist and throws (a TypeError in every new user's console); stored already, nothing is set.
        running.post("/settings/Comfy.Canvas.LeftMouseClickBehavior", "panning")
        running.post("/settings/Comfy.Canvas.MouseWheelScroll", "zoom")
        yield running


def editor(server, mode: str, *files: Path) -> dict:
    done = subprocess.run(["node", str(SCRIPT), server.url, mode, *map(str, files)], capture_output=True, text=True,
                          timeout=900, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def check_opened(name: str, graph: dict) -> None:
    assert graph["nodes"] > 0 and graph["scale"] == 1, (name, graph["nodes"], graph["scale"])
    assert graph["overlaps"] == [] and graph["clipped"] == [] and graph["toasts"] == [], (name, graph)
    queued = {node_id: {k: v for k, v in node.items() if k != "_meta"} for node_id, node in graph["prompt"].items()}
    assert queued == json.loads((API_WORKFLOWS / f"{name}_api.json").read_text()), name  # every value in its slot


def test_every_workflow_and_template_opens_readable_and_queues_its_api_twin(server):
    report = editor(server, "open", *UI_FILES)
    assert report["alerts"] == [] and report["errors"] == [], (report["alerts"], "\n".join(report["errors"]))
    assert sorted(report["files"]) == sorted(p.stem for p in UI_FILES)
    for name, graph in report["files"].items():
        check_opened(name, graph)
        wan = "wan" in name
        assert bool(graph["missingModels"]) == wan, (name, graph["missingModels"])  # the loaders' model links
        if wan:
            assert "wan_2.1_vae.safetensors" in graph["missingModels"][0] or "wan2.2_vae" in graph["missingModels"][0]
    extend = report["files"]["pfp_tiny_extend_cpu"]["timelines"]
    assert "0s–2s generated" in extend["6"] and "2s–4s generated" in extend["10"], extend  # the start clip is not
    assert sorted(report["templates"]["listed"]["pfp"]) == sorted(p.stem for p in UI_FILES)  # no API twin listed
    for name, graph in report["templates"]["results"].items():
        check_opened(name, graph)
        assert graph["thumbnail"] > 0, f"{name} has no thumbnail"


def test_edit_the_storyboard_and_seed_then_run_again(server):
    report = editor(server, "run", WORKFLOWS / "pfp_tiny_cpu.json")
    assert report["alerts"] == [] and report["errors"] == [], (report["alerts"], "\n".join(report["errors"]))
    first, edited, restored = report["reports"]
    assert first.startswith("new run pfp_tiny/run_") and "(0 resumed, 4 generated)" in first, first
    assert edited.startswith("new run pfp_tiny/run_") and edited.split(":")[0] != first.split(":")[0], edited
    assert restored.startswith(f"resumed {first.split()[2]}") and "(4 resumed, 0 generated)" in restored, restored
    assert report["encoderText"].startswith("base tiny, width 128"), report["encoderText"]
    assert report["encoderText"].endswith("finetuned for 1 sampling step a chunk"), report["encoderText"]
    videos = sorted((server.output / "pfp_tiny").glob("video_*.mp4"))
    assert len(videos) == 3 and all(v.stat().st_size > 0 for v in videos)
