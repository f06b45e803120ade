"""`python -m pfp_core queue` against a real ComfyUI, with stock nodes that need no model files."""
import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest

from comfy_env import REPO, comfy_path, comfy_server

# EmptyImage -> ImageAddNoise(seed) -> SaveImage: the seed changes the picture, and nothing needs a model file.
NOISY_IMAGE = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageAddNoise", "inputs": {"image": ["1", 0], "seed": 0, "strength": 0.5}},
    "3": {"class_type": "SaveImage", "inputs": {"images": ["2", 0], "filename_prefix": "pfp_queue"}},
}
# Passes validation, fails while running: an RGB image has no alpha channel to take a mask from.
FAILS_AT_RUN_TIME = {
    "1": {"class_type": "EmptyImage", "inputs": {"width": 64, "height": 64, "batch_size": 1, "color": 0}},
    "2": {"class_type": "ImageToMask", "inputs": {"image": ["1", 0], "channel": "alpha"}},
    "3": {"class_type": "MaskToImage", "inputs": {"mask": ["2", 0]}},
    "4": {"class_type": "SaveImage", "inputs": {"images": ["3", 0], "filename_prefix": "pfp_fail"}},
}


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """HOST:PORT of a real ComfyUI started for these tests (with the pack loaded, which the client ignores)."""
    comfy_path()
    with comfy_server(tmp_path_factory.mktemp("comfy")) as running:
        yield running.url.removeprefix("http://")


def queue(tmp_path: Path, workflow: dict, *args: str) -> subprocess.CompletedProcess:
    path = tmp_path / "workflow_api.json"
    path.write_text(json.dumps(workflow))
    return subprocess.run([sys.executable, "-m", "pfp_core", "queue", "--workflow", str(path), "--out",
                           str(tmp_path / "out"), "--timeout", "120", *args],
                          cwd=REPO, capture_output=True, text=True, timeout=600)


def png_size(path: Path) -> tuple[int, int]:
    return struct.unpack(">II", path.read_bytes()[16:24])  # IHDR width and height


def test_two_seeded_jobs_put_their_images_in_out(server, tmp_path):
    # The same server twice: two client threads at once, each following only its own prompt.
    result = queue(tmp_path, NOISY_IMAGE, "--server", server, "--server", server, "--seeds", "5", "6",
                   "--set", "1.color=16711680")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "--seeds/--count sets 2.seed (ImageAddNoise)" in result.stdout
    assert "--set sets 1.color (EmptyImage)" in result.stdout
    images = sorted((tmp_path / "out").rglob("*.png"))
    assert [image.parent.name for image in images] == ["0_5", "1_6"]
    assert all(png_size(image) == (64, 64) for image in images)
    assert images[0].read_bytes() != images[1].read_bytes()  # different seeds, different noise
    rows = result.stdout.split("job  server")[1].splitlines()[1:3]
    assert [row.split()[2:4] + row.split()[5:] for row in rows] == [["5", "ok", "1"], ["6", "ok", "1"]]


def test_invalid_input_fails_in_one_line_naming_node_and_field(server, tmp_path):
    result = queue(tmp_path, NOISY_IMAGE, "--server", server, "--seeds", "1", "--set", "1.width=0")
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and "node 1 (EmptyImage)" in lines[0] and "(width)" in lines[0], result.stderr


def test_a_rejected_job_does_not_stop_the_others(server, tmp_path):
    result = queue(tmp_path, NOISY_IMAGE, "--server", server, "--seeds", "5", "-1")
    assert result.returncode != 0
    assert "1 of 2 jobs failed; job 1: node 2 (ImageAddNoise)" in result.stderr and "(seed)" in result.stderr
    assert [image.parent.name for image in (tmp_path / "out").rglob("*.png")] == ["0_5"]


def test_an_error_while_running_names_the_node_and_exception(server, tmp_path):
    result = queue(tmp_path, FAILS_AT_RUN_TIME, "--server", server)
    lines = result.stderr.strip().splitlines()
    assert result.returncode != 0
    assert len(lines) == 1 and "node 2 (ImageToMask) raised IndexError" in lines[0], result.stderr
