"""Peak tensor memory of a piece of PyTorch code, on any device, CPU included.

`PeakMemory` is a TorchDispatchMode: every op's outputs are looked at, each new storage is counted once by its
bytes, and a weakref finalizer subtracts it when the storage dies. So `peak_bytes` is the most bytes of storages
created inside the block that were alive at once: what the code allocates beyond the weights and inputs it is
given. Views and in-place results share a storage already seen and are not counted again.

What it cannot see: workspaces a kernel allocates and frees inside one op (convolution buffers, an attention
kernel's tiles) and allocator rounding or fragmentation. CUDA's peak is somewhat higher for those reasons.
"""
from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class PeakMemory(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.live_bytes = 0
        self.peak_bytes = 0
        self._live: set[int] = set()  # data pointers of the counted storages still alive

    def _count(self, storage: torch.UntypedStorage) -> None:
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._live:
            return
        self._live.add(key)
        self.live_bytes += size
        weakref.finalize(storage, self._release, key, size)

    def _release(self, key: int, size: int) -> None:
        self._live.discard(key)
        self.live_bytes -= size

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in inputs:
                self._count(t.untyped_storage())
        self.peak_bytes = max(self.peak_bytes, self.live_bytes)
        return out
