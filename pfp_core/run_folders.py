"""Run folders named by their settings: identical settings find the same folder and resume there, any change of
settings lands in a new folder, and only the most recently used runs of a name are kept on disk.

Layout: PARENT/run_<key>/ where key is a hash of the run's fingerprint (what ChunkStore checks in the manifest).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path

KEEP_RUNS = 4  # run folders kept per run name: the newest by last use; older ones are deleted
_RUN_FOLDER = re.compile(r"run_[0-9a-f]{12}")


def run_key(fingerprint: dict) -> str:
    text = json.dumps(fingerprint, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def settings_folder(parent: Path, fingerprint: dict) -> Path:
    return parent / f"run_{run_key(fingerprint)}"


def mark_used(folder: Path) -> None:
    """A resumed run counts as recently used, so retention keeps it."""
    os.utime(folder)


def run_folders(parent: Path) -> list[Path]:
    """The run folders under `parent`, newest use first; other files and folders are never touched."""
    if not parent.is_dir():
        return []
    runs = [p for p in parent.iterdir() if _RUN_FOLDER.fullmatch(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)


def prune_runs(parent: Path, keep: Path, limit: int = KEEP_RUNS) -> list[Path]:
    """Delete run folders beyond the `limit` most recently used, never `keep`; returns what was deleted."""
    older = [p for p in run_folders(parent) if p != keep][max(limit - 1, 0):]
    for folder in older:
        shutil.rmtree(folder, ignore_errors=True)
    return older
