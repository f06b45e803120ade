"""Finished chunks on disk, so an interrupted run resumes instead of restarting.

One safetensors file per chunk (latents in fp32, frames as uint8), written to a temporary name and renamed, so a
file under its final name is always whole. A manifest holds the run's fingerprint, and every chunk carries the
digest of that fingerprint and a hash of its own tensors: a chunk only resumes the run that made it, unchanged,
even when the manifest was deleted or the chunk copied in from elsewhere. While a store is open the folder is
locked (flock on the folder itself, so nothing but the manifest and the chunks is ever left in it; a lock file
where there is no flock): a second run on the same folder is refused instead of mixing its chunks in.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import weakref
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open

from .. import limits
from ..atomic import process_alive, save_tensors, write_bytes

try:
    import fcntl
except ImportError:  # Windows: no flock; FolderLock uses a lock file instead
    fcntl = None

RUN_KEY, HASH_KEY = "pfp_run", "pfp_sha256"  # chunk metadata: the run's digest and the tensors' hash
REGENERATE = "delete that file and run again to regenerate the chunk"
MAX_CHUNK_BYTES = 2**32  # 4 GiB: far above a Wan chunk (5 s of 720p frames are 0.2 GB), a cap on what a resume reads


class ChunkStoreError(ValueError):
    pass


def content_hash(latents: torch.Tensor, frames: torch.Tensor) -> str:
    """sha256 over both tensors' dtypes, shapes and bytes."""
    digest = hashlib.sha256()
    for tensor in (latents, frames):
        digest.update(f"{tensor.dtype}{list(tensor.shape)}".encode())
        digest.update(tensor.contiguous().numpy().tobytes())
    return digest.hexdigest()


LOCK_FILE = ".pfp-lock"  # without flock (Windows): created with O_EXCL, holding its owner's pid


class FolderLock:
    """An exclusive flock on a folder itself (so no lock file is ever left), held until release(), the end of a
    `with` block or garbage collection, and by the kernel only while this process lives: a kill -9 leaves nothing
    stale. A second lock on the same folder, from any process, is refused with a one-line error naming `field`.

    Without fcntl (Windows) the lock is the file LOCK_FILE in the folder, created with O_EXCL, holding the owner's
    pid and removed on release. One whose process is gone (kill -9, power cut) is taken over; one that holds no pid
    or a pid that is in use again is reported as busy, and the message names the file to delete if no run is going."""

    def __init__(self, folder: Path, field: str):
        if fcntl is not None:
            self._release = weakref.finalize(self, os.close, self._flock(folder, field))
        else:
            self._release = weakref.finalize(self, remove_lock_file, take_lock_file(folder, field), os.getpid())

    @staticmethod
    def _flock(folder: Path, field: str) -> int:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(descriptor)
            raise folder_in_use(folder, field) from None
        return descriptor

    def __enter__(self) -> FolderLock:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def release(self) -> None:
        self._release()


def folder_in_use(folder: Path, field: str, detail: str = "") -> ChunkStoreError:
    return ChunkStoreError(f"{field}: {folder} is in use by another run that is still going{detail}; wait for it to "
                           "finish or choose another folder")


def take_lock_file(folder: Path, field: str) -> Path:
    """LOCK_FILE created in `folder` with this process's pid, or a ChunkStoreError while another process holds it."""
    path = folder / LOCK_FILE
    for _ in range(2):  # the second try follows the removal of a lock left by a process that is gone
        try:
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            owner = lock_owner(path)
            if owner is None or process_alive(owner):
                raise folder_in_use(folder, field, f" (process {owner or 'unknown'}; if none is, delete {path})") from None
            remove_lock_file(path, owner)
            continue
        with os.fdopen(descriptor, "w") as file:
            file.write(str(os.getpid()))
        return path
    raise folder_in_use(folder, field, f" (it took {path} over just now)")


def lock_owner(path: Path) -> int | None:
    """The pid in a lock file; None when it cannot be read or holds no pid (yet)."""
    try:
        text = path.read_text()[:20]
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() else None


def remove_lock_file(path: Path, owner: int) -> None:
    """Remove `path` if it is still the lock of `owner` (never another process's newer lock)."""
    if lock_owner(path) == owner:
        with contextlib.suppress(OSError):
            path.unlink()


class ChunkStore:
    """`field` names the input that chose the folder in messages: `out` on the command line, `run_name` in ComfyUI.
    close() (or the end of a `with` block, or garbage collection) releases the folder lock."""

    def __init__(self, folder: str | Path, fingerprint: dict, field: str = "out"):
        self.folder, self.field = limits.check_utf8_path(folder, field), field
        self.fingerprint = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
        self.run_id = hashlib.sha256(json.dumps(self.fingerprint, sort_keys=True).encode()).hexdigest()[:32]
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise ChunkStoreError(f"{field}: cannot create {self.folder} ({error.strerror}); "
                                  "choose a writable folder") from None
        self._lock = FolderLock(self.folder, field)
        try:
            self._check_manifest()
        except BaseException:  # a refused folder is released at once, not when the traceback is freed
            self.close()
            raise

    def __enter__(self) -> ChunkStore:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._lock.release()

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
            saved = limits.parse_json(limits.read_capped(self.manifest_path, self.field, limits.MAX_JSON_BYTES, "-"),
                                      self.field)
        except (OSError, ValueError):  # ValueError: bad JSON, bad UTF-8, too deep, too big, not a regular file
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
        """Anything under the chunk's name counts: load() refuses what is not a finished chunk of this run."""
        return os.path.lexists(self.chunk_path(index))

    def save(self, index: int, latents: torch.Tensor, frames: torch.Tensor) -> None:
        """latents [C, t, h, w] float, frames [T, H, W, 3] uint8."""
        latents = latents.detach().float().cpu()
        metadata = {RUN_KEY: self.run_id, HASH_KEY: content_hash(latents, frames)}
        with self._writing(f"chunk {index}"):
            save_tensors({"latents": latents, "frames": frames}, self.chunk_path(index), metadata)

    def adopt(self, index: int, source: Path) -> bool:
        """Take chunk `index` of the finished run in `source` (verified against that run's own digest and hash)
        as this run's, re-stamped with this run's digest: how a continued run shares its leading chunks. False if
        the source has no such chunk or no readable manifest."""
        try:
            fingerprint = json.loads((Path(source) / "manifest.json").read_bytes())
        except (OSError, ValueError):
            return False
        if not isinstance(fingerprint, dict) or not os.path.lexists(Path(source) / self.chunk_path(index).name):
            return False
        with ChunkStore(source, fingerprint, self.field) as origin:
            latents, frames = origin.load(index)
        self.save(index, latents, frames)
        return True

    def load(self, index: int, latent_shape: tuple[int, ...] | None = None,
             frame_shape: tuple[int, ...] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A finished chunk of this run, unchanged since it was written and of the expected shapes (when given).
        The run's digest and the shapes are checked from the header, before any tensor is read."""
        path = self.chunk_path(index)
        try:
            limits.regular_file(path, self.field, MAX_CHUNK_BYTES, REGENERATE)
        except ValueError as error:  # a FIFO would block the reader forever
            raise ChunkStoreError(str(error)) from None
        try:
            with safe_open(str(path), framework="pt") as f:
                metadata = f.metadata() or {}
                self._check_header(path, metadata, f, {"latents": latent_shape, "frames": frame_shape})
                latents, frames = f.get_tensor("latents"), f.get_tensor("frames")
        except (SafetensorError, OSError) as error:
            raise self._refused(path, f"is damaged ({type(error).__name__})") from None
        if metadata.get(HASH_KEY) != content_hash(latents, frames):
            raise self._refused(path, "is damaged (its tensors no longer match their hash)")
        return latents, frames

    def _check_header(self, path: Path, metadata: dict[str, str], f,
                      shapes: dict[str, tuple[int, ...] | None]) -> None:
        """The run's digest and the tensors' shapes, from the header of the open file `f`."""
        if metadata.get(RUN_KEY) != self.run_id:
            raise self._refused(path, "belongs to another run (its fingerprint differs from this run's)")
        for name, expected in shapes.items():
            found = f.get_slice(name).get_shape()
            if expected is not None and tuple(found) != tuple(expected):
                raise self._refused(path, f"holds {name} of shape {list(found)}, this run needs {list(expected)}")

    def _refused(self, path: Path, problem: str) -> ChunkStoreError:
        return ChunkStoreError(f"{self.field}: {path} {problem}; {REGENERATE}")
