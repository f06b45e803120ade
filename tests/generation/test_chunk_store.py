"""Chunk integrity (each chunk carries its run's digest and a hash of its tensors), the run-folder lock (held
across processes, released at the end of a run), and temporaries that are unique per process and swept once
their process is gone. Real files and real processes throughout."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from bad_inputs import REPO, generate, run_process

from pfp_core.atomic import save_tensors, temporary_owner
from pfp_core.generation import chunk_store
from pfp_core.generation.chunk_store import (HASH_KEY, LOCK_FILE, RUN_KEY, ChunkStore, ChunkStoreError, FolderLock,
                                             content_hash)

LATENTS, FRAMES = torch.arange(48.0).reshape(3, 1, 4, 4), torch.arange(48, dtype=torch.uint8).reshape(1, 4, 4, 3)


def saved_store(folder: Path, fingerprint: dict) -> None:
    with ChunkStore(folder, fingerprint) as store:
        store.save(0, LATENTS, FRAMES)


def test_a_chunk_carries_its_runs_digest_and_its_hash_and_loads_back(tmp_path):
    saved_store(tmp_path, {"seed": 1})
    with safe_open(str(tmp_path / "chunk_0000.safetensors"), framework="pt") as f:
        metadata = f.metadata()
    with ChunkStore(tmp_path, {"seed": 1}) as store:
        assert metadata == {RUN_KEY: store.run_id, HASH_KEY: content_hash(LATENTS, FRAMES)}
        latents, frames = store.load(0, (3, 1, 4, 4), (1, 4, 4, 3))
    assert torch.equal(latents, LATENTS) and torch.equal(frames, FRAMES)


def test_a_chunk_of_another_run_is_refused_even_without_a_manifest(tmp_path):
    saved_store(tmp_path, {"seed": 1})
    (tmp_path / "manifest.json").unlink()
    with ChunkStore(tmp_path, {"seed": 2}) as store, pytest.raises(ChunkStoreError, match="belongs to another run"):
        store.load(0)


def test_changed_tensor_values_with_an_intact_header_are_refused(tmp_path):
    saved_store(tmp_path, {"seed": 1})
    chunk = tmp_path / "chunk_0000.safetensors"
    data = bytearray(chunk.read_bytes())
    data[-1] ^= 0xFF  # the last frame byte
    chunk.write_bytes(bytes(data))
    with ChunkStore(tmp_path, {"seed": 1}) as store, pytest.raises(ChunkStoreError, match="no longer match their hash"):
        store.load(0)


def header_only_chunk(path: Path, run_id: str, latent_shape: list[int]) -> None:
    """A safetensors file whose header claims `latent_shape` floats, its data a sparse hole of that size."""
    latent_bytes = 4 * math.prod(latent_shape)
    header = json.dumps({"__metadata__": {RUN_KEY: run_id, HASH_KEY: "0"},
                         "latents": {"dtype": "F32", "shape": latent_shape, "data_offsets": [0, latent_bytes]},
                         "frames": {"dtype": "U8", "shape": [1], "data_offsets": [latent_bytes, latent_bytes + 1]}})
    with open(path, "wb") as file:
        file.write(len(header).to_bytes(8, "little") + header.encode())
        file.truncate(8 + len(header) + latent_bytes + 1)


def test_a_header_claiming_a_huge_chunk_is_refused_before_its_tensors_are_read(tmp_path):
    with ChunkStore(tmp_path, {"seed": 1}) as store:
        header_only_chunk(store.chunk_path(0), store.run_id, [16, 1024, 128, 128])  # 1 GiB of latents
        started = time.monotonic()
        with pytest.raises(ChunkStoreError, match=r"holds latents of shape \[16, 1024, 128, 128\], this run needs"):
            store.load(0, (16, 1, 16, 16), (1, 32, 32, 3))
    assert time.monotonic() - started < 2


def test_a_chunk_written_without_integrity_metadata_is_refused(tmp_path):
    """A file of the old format (or one made by hand) cannot prove it belongs to this run."""
    saved_store(tmp_path, {"seed": 1})
    save_tensors({"latents": LATENTS, "frames": FRAMES}, tmp_path / "chunk_0000.safetensors")
    with ChunkStore(tmp_path, {"seed": 1}) as store, pytest.raises(ChunkStoreError, match="chunk_0000"):
        store.load(0)


def test_the_folder_lock_refuses_a_second_store_until_the_first_is_closed(tmp_path):
    first = ChunkStore(tmp_path, {"seed": 1})
    with pytest.raises(ChunkStoreError, match="in use by another run"):
        ChunkStore(tmp_path, {"seed": 1})
    first.close()
    ChunkStore(tmp_path, {"seed": 1}).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # the lock leaves no file


def test_a_refused_folder_is_unlocked_at_once_even_while_its_error_is_kept(tmp_path):
    saved_store(tmp_path, {"seed": 1})
    with pytest.raises(ChunkStoreError, match="different run") as refused:
        ChunkStore(tmp_path, {"seed": 2})
    assert refused.value.__traceback__ is not None  # the traceback (and the half-built store in it) is still alive
    ChunkStore(tmp_path, {"seed": 1}).close()


HOLDER = """
import sys, time
from pfp_core.generation.chunk_store import ChunkStore
store = ChunkStore(sys.argv[1], {"seed": 1})
print("locked", flush=True)
time.sleep(60)
"""


def test_the_lock_holds_across_processes_and_dies_with_its_holder(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(ChunkStoreError, match="in use by another run"):
            ChunkStore(tmp_path, {"seed": 1})
    finally:
        holder.kill()
        holder.wait()
    ChunkStore(tmp_path, {"seed": 1}).close()  # kill -9 released it: no stale lock to clean up


@pytest.fixture
def without_flock(monkeypatch):
    """This platform as Windows sees it: no fcntl, so FolderLock falls back to its lock file."""
    monkeypatch.setattr(chunk_store, "fcntl", None)


def test_without_flock_a_lock_file_refuses_a_second_store_until_the_first_is_closed(tmp_path, without_flock):
    first = ChunkStore(tmp_path, {"seed": 1})
    assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
    with pytest.raises(ChunkStoreError) as refused:
        ChunkStore(tmp_path, {"seed": 1})
    assert str(refused.value) == (f"out: {tmp_path} is in use by another run that is still going (process {os.getpid()}; "
                                  f"if none is, delete {tmp_path / LOCK_FILE}); wait for it to finish or choose "
                                  "another folder")
    first.close()
    ChunkStore(tmp_path, {"seed": 1}).close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json"]  # released: the lock file is gone


def test_without_flock_the_lock_of_a_process_that_is_gone_is_taken_over(tmp_path, without_flock):
    """A real other process holds the lock file (as a run killed with -9 would leave it): refused while it lives,
    taken over once it is gone."""
    holder = subprocess.Popen(["sleep", "60"])
    try:
        (tmp_path / LOCK_FILE).write_text(str(holder.pid))
        with pytest.raises(ChunkStoreError, match=f"in use by another run that is still going .process {holder.pid};"):
            FolderLock(tmp_path, "run_name")
    finally:
        holder.kill()
        holder.wait()
    with FolderLock(tmp_path, "run_name"):
        assert (tmp_path / LOCK_FILE).read_text() == str(os.getpid())
    assert not (tmp_path / LOCK_FILE).exists()


def test_without_flock_a_lock_file_without_a_pid_is_busy_and_names_the_file_to_delete(tmp_path, without_flock):
    (tmp_path / LOCK_FILE).write_text("")  # a holder between creating the file and writing its pid, or damage
    with pytest.raises(ChunkStoreError, match=f"process unknown; if none is, delete {tmp_path / LOCK_FILE}"):
        FolderLock(tmp_path, "out")
    assert (tmp_path / LOCK_FILE).exists()  # never removed on a guess


def test_two_generate_runs_on_one_output_never_mix_their_chunks(tmp_path):
    """Seeds 0 and 1 started together on one --out: one finishes, the other is refused in one line; every chunk
    on disk then belongs to the run that finished, and a rerun of it resumes them all."""
    argv = generate(tmp_path)
    runs = [subprocess.Popen([sys.executable, "-m", "pfp_core", *argv, "--seed", seed], cwd=REPO,
                             stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for seed in ("0", "1")]
    outcomes = [(run.wait(timeout=600), run.stderr.read()) for run in runs]
    winners = [seed for seed, (code, _) in zip(("0", "1"), outcomes) if code == 0]
    assert len(winners) == 1, outcomes
    (code, stderr), = [outcome for outcome in outcomes if outcome[0] != 0]
    assert code == 2 and len(stderr.strip().splitlines()) == 1, stderr
    assert "in use by another run" in stderr or "holds chunks of a different run" in stderr, stderr
    code, stderr = run_process([*argv, "--seed", winners[0]])
    assert code == 0 and not stderr, stderr
    assert sorted(p.name for p in (tmp_path / "v_chunks").iterdir()) == [
        "chunk_0000.safetensors", "chunk_0001.safetensors", "manifest.json"]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temporaries_are_per_process_and_a_dead_processs_are_removed_by_the_next_write(tmp_path):
    target = tmp_path / "chunk_0000.safetensors"
    stale = tmp_path / f".{target.name}.{dead_pid()}-00ff.tmp"
    live = tmp_path / f".{target.name}.{os.getppid()}-00ff.tmp"  # pytest's parent: alive for the whole test
    for path in (stale, live):
        path.write_bytes(b"half a chunk")
    assert temporary_owner(target, stale.name) is not None
    assert temporary_owner(target, "chunk_0000.safetensors.tmp") is None
    save_tensors({"x": torch.zeros(1)}, target)
    assert not stale.exists() and live.exists()


def test_a_killed_write_leaves_a_temporary_that_the_resumed_run_removes(tmp_path):
    """kill -9 while chunk 1 is being written, simulated by its temporary of a dead process: the rerun regenerates
    chunk 1 and nothing but the manifest and the chunks is left."""
    argv = generate(tmp_path)
    code, stderr = run_process(argv)
    assert code == 0, stderr
    chunks = tmp_path / "v_chunks"
    (chunks / "chunk_0001.safetensors").rename(chunks / f".chunk_0001.safetensors.{dead_pid()}-1a2b.tmp")
    code, stderr = run_process(argv)
    assert code == 0, stderr
    assert sorted(p.name for p in chunks.iterdir()) == ["chunk_0000.safetensors", "chunk_0001.safetensors",
                                                        "manifest.json"]
