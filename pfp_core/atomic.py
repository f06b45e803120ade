"""Atomic file writes: data goes to a temporary name in the same folder, is flushed to disk, then renamed, so a
crash (or a full disk) never leaves a half-written file under the final name. The temporary name is fixed per
target, so what a killed process leaves behind is overwritten by the next write of that file, never piled up."""
from __future__ import annotations

import contextlib
import os
import re
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

FILE_MODE = 0o644  # as ComfyUI's own outputs; safetensors would create 0600


@contextlib.contextmanager
def replacing(path: str | Path, keep_suffix: bool = False) -> Iterator[Path]:
    """Yields the temporary path to write; on success it is synced and renamed to `path`, on failure removed.
    keep_suffix: for writers that pick the format from the extension (OpenCV), the temporary is `.NAME.tmp.EXT`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}" if keep_suffix else path.name + ".tmp")
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_bytes(path: str | Path, data: bytes) -> Path:
    with replacing(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    with replacing(path) as tmp:
        try:
            save_file({name: t.detach().contiguous().cpu() for name, t in tensors.items()}, str(tmp), metadata=metadata)
        except SafetensorError as error:  # a full disk arrives as "I/O error: ... (os error 28)": make it an OSError
            code = re.search(r"os error (\d+)", str(error))
            if code is None:
                raise
            raise OSError(int(code.group(1)), os.strerror(int(code.group(1)))) from None
    return Path(path)
