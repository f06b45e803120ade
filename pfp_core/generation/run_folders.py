"""Run folders named by their settings: identical settings find the same folder and resume there, any change of
settings lands in a new folder, and only the most recently used runs of a name are kept on disk.

Layout: PARENT/run_<key>/ where key is a hash of the run's fingerprint (what ChunkStore checks in the manifest).
A new run can take over leading chunks of another run of the same name: those it would generate identically
(shared_chunks), or the first N of the latest run when asked to keep them (latest_plain_run).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Callable

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


def latest_plain_run(parent: Path, run_name: str) -> Path:
    """The most recently used run of this name that kept no chunks of another: what keep_chunks keeps from (a
    re-queued keep_chunks run finds the same one, so it resumes)."""
    for folder in run_folders(parent):
        if "kept" not in read_manifest(folder):
            return folder
    raise ValueError(f"keep_chunks: run_name '{run_name}' has no earlier run to keep chunks from; run once with "
                     "keep_chunks 0")


def read_manifest(folder: Path) -> dict:
    """A sibling run's settings; {} when its manifest is missing or damaged (it then shares nothing)."""
    try:
        saved = json.loads((folder / "manifest.json").read_bytes())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


FullChunks = Callable[[int], int]  # total video frames -> chunks that are whole (not cut short by the end)
PER_CHUNK = ("prompts", "frames")  # fingerprint entries that may differ between runs sharing leading chunks


def shared_chunks(saved: dict, fingerprint: dict, full_chunks: FullChunks) -> int:
    """How many leading chunks a run with `fingerprint` would generate exactly as the run whose manifest is
    `saved`: every other setting equal, the same chunk length, the same prompts up to there, and those chunks
    whole in both runs (a chunk depends only on the settings and the chunks and prompts before it)."""
    if not (isinstance(saved.get("frames"), list) and isinstance(saved.get("prompts"), list)):
        return 0
    others = set(saved) | set(fingerprint)
    if any(saved.get(key) != fingerprint.get(key) for key in others - set(PER_CHUNK)):
        return 0
    (saved_total, saved_chunk), (total, chunk) = saved["frames"], fingerprint["frames"]
    if saved_chunk != chunk:
        return 0
    limit, count = min(full_chunks(saved_total), full_chunks(total)), 0
    while count < limit and saved["prompts"][count] == fingerprint["prompts"][count]:
        count += 1
    return count
