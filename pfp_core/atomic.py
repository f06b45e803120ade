"""Atomic file writes: data goes to a temporary name in the same folder, is flushed to disk, checked, then renamed,
so a crash, a full disk or a writer that fails silently never leaves a broken file under the final name (an older
good file stays). Each writing process has its own temporary name (`.NAME.PID-TOKEN.tmp`), so two processes
writing the same file never share one; what a killed process left behind is removed by the next write of that
file once that process is gone."""
from __future__ import annotations

import contextlib
import os
import re
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import save_file

FILE_MODE = 0o644  # as ComfyUI's own outputs; safetensors would create 0600
Check = Callable[[Path], None]  # raises OSError when the written temporary is not what was meant


@contextlib.contextmanager
def replacing(path: str | Path, keep_suffix: bool = False, check: Check | None = None) -> Iterator[Path]:
    """Yields the temporary path to write; on success it is synced, checked by `check` and renamed to `path`, on
    failure removed. keep_suffix: for writers that pick the format from the extension (OpenCV), the temporary ends
    in `.tmp.EXT`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp" + (path.suffix if keep_suffix else ""))
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, FILE_MODE)
        if check is not None:
            check(tmp)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if error.errno is None:  # a check's own message
            raise
        raise OSError(error.errno, error.strerror, str(path)) from None  # named by the file meant, not the temporary
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def temporary_owner(path: Path, name: str) -> int | None:
    """The pid in the name of a temporary of `path`, or None when `name` is not one."""
    match = re.fullmatch(rf"\.{re.escape(path.name)}\.(\d+)-[0-9a-f]+\.tmp(?:{re.escape(path.suffix)})?", name)
    return int(match.group(1)) if match else None


def remove_stale_temporaries(path: Path) -> None:
    """Temporaries of `path` whose process no longer runs: left by a kill -9 or a power cut."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(path.parent):
            owner = temporary_owner(path, entry.name)
            if owner is not None and not process_alive(owner):
                Path(entry.path).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there, not test the pid
        return windows_process_alive(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: alive, owned by someone else
        return True
    return True


def windows_process_alive(pid: int) -> bool:
    import ctypes

    kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return kernel32.GetLastError() == 5  # ERROR_ACCESS_DENIED: alive, owned by someone else
    code = ctypes.c_ulong()
    try:
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


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
