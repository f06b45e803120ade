"""Finds a real ComfyUI through COMFYUI_PATH; integration tests skip, saying so, when there is none."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


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
    except ImportError as error:
        pytest.skip(f"ComfyUI at {root} cannot be imported with this Python ({error}); run with its environment")
    args.cpu = True
    if str(REPO.parent) not in sys.path:
        sys.path.insert(0, str(REPO.parent))
    return importlib.import_module(REPO.name)
