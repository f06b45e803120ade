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

from ..pfp_core.generation.chunk_store import ChunkStore
from ..pfp_core.generation.generator import Callbacks, GenerationResult
from ..pfp_core.inputs import inside
from ..pfp_core.generation.run_folders import (KEEP_RUNS, FullChunks, latest_plain_run, mark_used, prune_runs,
                                               read_manifest, run_folders, settings_folder, shared_chunks)


def run_parent(run_name: str) -> Path:
    """Runs named `run_name` live in output/pfp/<run_name>/run_<settings key>."""
    return inside(Path(folder_paths.get_output_directory()) / "pfp", run_name, "run_name")


def start_hash(start: torch.Tensor) -> str:
    return hashlib.sha1(start.numpy().tobytes()).hexdigest()


@dataclass
class RunFolder:
    store: ChunkStore
    continued_from: str | None = None  # the run whose leading chunks this one took over

    @property
    def label(self) -> str:
        return f"{self.store.folder.parent.name}/{self.store.folder.name}"

    @classmethod
    def open(cls, run_name: str, fingerprint: dict, full_chunks: FullChunks, keep_chunks: int = 0) -> "RunFolder":
        """The folder of these exact settings: resumed if it exists, else new, with older runs pruned. A run that
        continues another (more seconds, or prompts changed from some chunk on) links its shared chunks;
        keep_chunks N takes the first N chunks of the latest run of this name and generates the rest with these
        settings (another seed, say)."""
        parent = run_parent(run_name)
        source = latest_plain_run(parent, run_name) if keep_chunks else None
        if source is not None:
            fingerprint = {**fingerprint, "kept": {"run": source.name, "chunks": keep_chunks}}
        run = cls(ChunkStore(settings_folder(parent, fingerprint), fingerprint, "run_name"))
        total = fingerprint["frames"][0]
        shared = (source, min(keep_chunks, full_chunks(total))) if source is not None else run.most_shared(full_chunks)
        run.continued_from = run.link_chunks(*shared)
        mark_used(run.store.folder)
        prune_runs(parent, run.store.folder, KEEP_RUNS)
        return run

    def most_shared(self, full_chunks: FullChunks) -> tuple[Path | None, int]:
        """The sibling run that shares the most leading chunks with this one, and how many."""
        siblings = [p for p in run_folders(self.store.folder.parent) if p != self.store.folder]
        counts = {p: shared_chunks(read_manifest(p), self.store.fingerprint, full_chunks) for p in siblings}
        best = max(counts, key=counts.get, default=None)
        return best, counts.get(best, 0)

    def link_chunks(self, source: Path | None, count: int) -> str | None:
        """Chunks 0..count-1 of `source` that this run lacks, verified and re-stamped as this run's (a chunk
        proves which run it belongs to, so a shared chunk is copied, not linked); the source's name if any."""
        adopted = sum(self.store.adopt(index, source) for index in range(count if source is not None else 0)
                      if not self.store.has(index))
        return source.name if adopted else None

    def summary(self, result: GenerationResult, frames: int, fps: float) -> str:
        generated = len(result.memory_tokens)
        how = f"resumed {self.label}" if result.resumed_chunks else f"new run {self.label}"
        if self.continued_from is not None:
            how = f"new run {self.label}, continuing {self.continued_from}"
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
