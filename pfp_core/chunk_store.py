"""Finished chunks on disk, so an interrupted run resumes instead of restarting.

One safetensors file per chunk (latents in fp32, frames as uint8), written to a temporary name and renamed, so a
file under its final name is always whole. A manifest holds the run's fingerprint: a folder only resumes the run
that started it.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .atomic import save_tensors, write_bytes


class ChunkStoreError(ValueError):
    pass


class ChunkStore:
    """`field` names the input that chose the folder in messages: `out` on the command line, `run_name` in ComfyUI."""

    def __init__(self, folder: str | Path, fingerprint: dict, field: str = "out"):
        self.folder, self.field = Path(folder), field
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ChunkStoreError(f"{field}: cannot create {self.folder} ({error.strerror}); "
                                  "choose a writable folder") from None
        self._check_manifest()

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    def _check_manifest(self) -> None:
        if self.manifest_path.exists():
            saved = self._read_manifest()
            if saved != self.fingerprint:
                changed = sorted(k for k in set(saved) | set(self.fingerprint) if saved.get(k) != self.fingerprint.get(k))
                raise ChunkStoreError(f"{self.field}: {self.folder} holds chunks of a different run (differs in "
                                      f"{', '.join(changed)}); use a new folder or delete it to start over")
            return
        with self._writing(self.manifest_path.name):
            write_bytes(self.manifest_path, json.dumps(self.fingerprint, indent=1).encode())

    def _read_manifest(self) -> dict:
        try:
            saved = json.loads(self.manifest_path.read_bytes())
        except (OSError, ValueError):  # ValueError: bad JSON or bad UTF-8
            saved = None
        if not isinstance(saved, dict):
            raise ChunkStoreError(f"{self.field}: {self.manifest_path} is damaged (not a run manifest); use a new "
                                  "folder or delete this one to start over")
        return saved

    @contextlib.contextmanager
    def _writing(self, name: str) -> Iterator[None]:
        try:
            yield
        except OSError as error:
            raise ChunkStoreError(f"{self.field}: cannot write {name} in {self.folder} ({error.strerror}); "
                                  "free space or choose another folder; finished chunks are kept") from None

    def chunk_path(self, index: int) -> Path:
        return self.folder / f"chunk_{index:04d}.safetensors"

    def has(self, index: int) -> bool:
        return self.chunk_path(index).exists()

    def save(self, index: int, latents: torch.Tensor, frames: torch.Tensor) -> None:
        """latents [C, t, h, w] float, frames [T, H, W, 3] uint8."""
        with self._writing(f"chunk {index}"):
            save_tensors({"latents": latents.float(), "frames": frames}, self.chunk_path(index))

    def load(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        path = self.chunk_path(index)
        try:
            tensors = load_file(str(path))
            return tensors["latents"], tensors["frames"]
        except (SafetensorError, KeyError, OSError) as error:
            raise ChunkStoreError(f"{self.field}: {path} is damaged ({type(error).__name__}); delete that file and run "
                                  "again to regenerate the chunk") from None
