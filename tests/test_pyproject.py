"""pyproject.toml carries what the Comfy registry reads: [project] name and a semantic version (the only place
the version is written), and [tool.comfy] with the publisher, display name, icon and the ComfyUI it needs."""
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_registry_fields_are_present():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert re.fullmatch(r"[a-z][a-z0-9-]*", project["name"]) and "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert {"PublisherId", "DisplayName", "Icon", "requires-comfyui"} <= set(comfy)
    assert comfy["requires-comfyui"].startswith(">=0.3.64")


def test_the_version_is_written_in_pyproject_only():
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    sources = [p for p in ROOT.rglob("*.py") if "tests" not in p.parts and version in p.read_text()]
    assert sources == [], sources
