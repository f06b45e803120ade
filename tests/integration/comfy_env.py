"""Finds a real ComfyUI through COMFYUI_PATH; integration tests skip, saying so, when there is none."""
from __future__ import annotations

import contextlib
import importlib
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from pfp_core.video_io import read_video

REPO = Path(__file__).resolve().parents[2]
WORKFLOWS = REPO / "workflows"
API_WORKFLOWS = WORKFLOWS / "api"


def comfy_path() -> Path:
    path = os.environ.get("COMFYUI_PATH")
    if not path or not (Path(path) / "comfy").is_dir():
        pytest.skip("COMFYUI_PATH does not point at a ComfyUI checkout; integration tests need a real ComfyUI")
    return Path(path)


def import_comfy_in_process():
    """Import comfy on CPU and load this repository as the pack module `pfp_pack`."""
    root = comfy_path()
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    try:
        from comfy.cli_args import args

        args.cpu = True  # before comfy.model_management picks a device
        import comfy.model_management  # noqa: F401  (the import that needs ComfyUI's requirements)
    except ImportError as error:
        pytest.skip(f"ComfyUI at {root} cannot be imported with this Python ({error}); run the integration tests "
                    "with ComfyUI's Python")
    if str(REPO.parent) not in sys.path:
        sys.path.insert(0, str(REPO.parent))
    return importlib.import_module(REPO.name)



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ComfyServer:
    """A real ComfyUI on loopback with this repository loaded as the custom node pack `pfp`."""

    def __init__(self, url: str, process: subprocess.Popen, log_path: Path, output: Path, models: Path):
        self.url, self.process, self.log_path, self.output, self.models = url, process, log_path, output, models
        self.temp = output.parent / "temp"

    def get(self, path: str) -> dict:
        with urllib.request.urlopen(self.url + path, timeout=30) as response:
            return json.loads(response.read())

    def post(self, path: str, body: dict) -> tuple[int, dict]:
        request = urllib.request.Request(self.url + path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read() or b"{}")

    def wait_for(self, prompt_id: str, timeout: float = 300) -> dict:
        """Poll /history until the prompt has finished (successfully or not)."""
        deadline = time.time() + timeout
        while time.time() < deadline:
            entry = self.get(f"/history/{prompt_id}").get(prompt_id)
            if entry and entry.get("status", {}).get("completed") is not None and (
                    entry["status"]["completed"] or entry["status"].get("status_str") == "error"):
                return entry
            time.sleep(0.5)
        raise TimeoutError(f"prompt {prompt_id} did not finish in {timeout} s; log: {self.log_path}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def is_up(self) -> bool:
        """The process runs and answers /system_stats."""
        try:
            return self.process.poll() is None and "system" in self.get("/system_stats")
        except (urllib.error.URLError, ConnectionError):
            return False


def tiny_workflow(run_name: str, seconds: float = 4.0) -> dict:
    """workflows/api/pfp_tiny_cpu_api.json with its own run name (output/pfp/RUN/run_<settings>) and video prefix
    (RUN/video)."""
    workflow = json.loads((API_WORKFLOWS / "pfp_tiny_cpu_api.json").read_text())
    workflow["8"]["inputs"]["run_name"] = run_name
    workflow["6"]["inputs"]["seconds"] = seconds
    workflow["9"]["inputs"]["filename_prefix"] = f"{run_name}/video"
    return workflow


def saved_files(server: ComfyServer, entry: dict) -> list[Path]:
    """Every file the prompt's output nodes wrote, from its /history entry."""
    return [server.output / item["subfolder"] / item["filename"]
            for output in entry["outputs"].values() for item in output.get("images", [])]


def saved_video(server: ComfyServer, entry: dict, node: str = "9") -> np.ndarray:
    """The frames [T, H, W, 3] of the video a SaveVideo node (9 in the tiny workflows) wrote."""
    item = entry["outputs"][node]["images"][0]
    return read_video(server.output / item["subfolder"] / item["filename"])[0]


def run_folders(server: ComfyServer, run_name: str) -> list[Path]:
    """The runs of `run_name`: one folder per set of settings."""
    return sorted((server.output / "pfp" / run_name).glob("run_*"))


@contextlib.contextmanager
def comfy_server(tmp: Path) -> Iterator[ComfyServer]:
    root = comfy_path()
    python = os.environ.get("COMFYUI_PYTHON", sys.executable)
    packs = tmp / "custom_nodes"
    packs.mkdir()
    (packs / "pfp").symlink_to(REPO)
    config = tmp / "extra_model_paths.yaml"
    (tmp / "models" / "pfp_encoders").mkdir(parents=True)
    config.write_text(f"pfp_test:\n    base_path: {tmp}\n    custom_nodes: custom_nodes\n"
                      "    pfp_encoders: models/pfp_encoders\n")
    port = free_port()
    output = tmp / "output"
    for folder in ("output", "temp", "user", "input"):
        (tmp / folder).mkdir()
    log_path = tmp / "comfy.log"
    args = [python, "main.py", "--cpu", "--listen", "127.0.0.1", "--port", str(port), "--disable-auto-launch",
            "--disable-api-nodes", "--extra-model-paths-config", str(config), "--output-directory", str(output),
            "--temp-directory", str(tmp / "temp"), "--user-directory", str(tmp / "user"), "--input-directory",
            str(tmp / "input"), "--database-url", "sqlite:///:memory:"]
    with open(log_path, "w") as log:
        process = subprocess.Popen(args, cwd=root, stdout=log, stderr=subprocess.STDOUT)
    server = ComfyServer(f"http://127.0.0.1:{port}", process, log_path, output, tmp / "models")
    try:
        deadline = time.time() + 180
        while True:
            try:
                server.get("/system_stats")
                break
            except (urllib.error.URLError, ConnectionError):
                if process.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"ComfyUI did not start; log:\n{server.log()[-3000:]}")
                time.sleep(1)
        yield server
    finally:
        stop(process)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
