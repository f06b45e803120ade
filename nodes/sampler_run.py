"""The Autoregressive Sampler's run around pfp_core's generator: the run folder its settings choose, progress in
ComfyUI, and the summary shown on the node."""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
import comfy.model_management
import comfy.utils
import folder_paths

from ..pfp_core.chunk_store import ChunkStore
from ..pfp_core.generator import Callbacks, GenerationResult
from ..pfp_core.inputs import inside
from ..pfp_core.run_folders import KEEP_RUNS, mark_used, prune_runs, settings_folder


def run_parent(run_name: str) -> Path:
    """Runs named `run_name` live in output/pfp/<run_name>/run_<settings key>."""
    return inside(Path(folder_paths.get_output_directory()) / "pfp", run_name, "run_name")


def start_hash(start: torch.Tensor) -> str:
    return hashlib.sha1(start.numpy().tobytes()).hexdigest()


@dataclass
class RunFolder:
    store: ChunkStore

    @property
    def label(self) -> str:
        return f"{self.store.folder.parent.name}/{self.store.folder.name}"

    @classmethod
    def open(cls, run_name: str, fingerprint: dict) -> "RunFolder":
        """The folder of these exact settings: resumed if it exists, else new, with older runs pruned."""
        parent = run_parent(run_name)
        folder = settings_folder(parent, fingerprint)
        store = ChunkStore(folder, fingerprint, "run_name")
        mark_used(folder)
        prune_runs(parent, folder, KEEP_RUNS)
        return cls(store)

    def summary(self, result: GenerationResult, frames: int, fps: float) -> str:
        generated = len(result.memory_tokens)
        how = f"resumed {self.label}" if result.resumed_chunks else f"new run {self.label}"
        tokens = f", memory tokens up to {max(result.memory_tokens)}" if generated else ""
        return (f"{how}: {generated + result.resumed_chunks} chunks ({result.resumed_chunks} resumed, {generated} "
                f"generated), {frames} frames at {fps:g} fps{tokens}")


def progress_callbacks() -> Callbacks:
    """One progress bar over the whole run with the latest chunk's last frame as preview; caches are released
    between chunks; ComfyUI's interrupt stops between sampling steps."""
    bar = comfy.utils.ProgressBar(1)

    def on_chunk(index: int, frames: torch.Tensor) -> None:
        comfy.model_management.soft_empty_cache()
        preview = Image.fromarray(frames[-1].numpy())
        bar.update_absolute(bar.current, bar.total, ("JPEG", preview, 512))

    return Callbacks(on_progress=lambda done, total: bar.update_absolute(done, total), on_chunk=on_chunk,
                     should_cancel=comfy.model_management.processing_interrupted)
