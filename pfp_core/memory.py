"""Memory injection: the single place where compressed history enters a Wan DiT.

Memory tokens are appended to the video tokens after patch embedding, take part in every self-attention with
their own 3D rotary positions, and are dropped before the head. The standalone DiT and ComfyUI's WanModel both
run `pfp_core.dit.wan_forward`, which calls these functions, so an encoder trained here works unchanged there.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

from .atomic import save_tensors


@dataclass
class Memory:
    """Compressed history phi(H).

    tokens: [B, M, dim] in the DiT's inner width. positions: [M, 3] centres (t, h, w) of the regions the tokens
    summarise, in latent cells, t counted from the first latent frame of the history window.
    """

    tokens: torch.Tensor
    positions: torch.Tensor
    latent_frames: int  # length of the compressed history in latent frames
    seconds: float

    @property
    def token_count(self) -> int:
        return self.tokens.shape[1]

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Memory":
        return Memory(self.tokens.to(device=device, dtype=dtype), self.positions.to(device=device),
                      self.latent_frames, self.seconds)

    def repeat(self, batch: int) -> "Memory":
        """The same memory for `batch` samples (e.g. the conditional and unconditional halves of CFG)."""
        if self.tokens.shape[0] == batch:
            return self
        return Memory(self.tokens.expand(batch, -1, -1), self.positions, self.latent_frames, self.seconds)


def latent_to_token_positions(positions: torch.Tensor, patch_size: tuple[int, int, int]) -> torch.Tensor:
    """Latent-cell centres -> the DiT token grid, where token j covers cells [j*p, (j+1)*p)."""
    patch = torch.tensor(patch_size, dtype=positions.dtype, device=positions.device)
    return (positions - (patch - 1) / 2) / patch


def join_memory(tokens: torch.Tensor, positions: torch.Tensor, memory: Memory | None,
                patch_size: tuple[int, int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Append memory tokens ([B, M, dim]) and their token-grid positions ([B, M, 3]) to the video tokens."""
    if memory is None or memory.token_count == 0:
        return tokens, positions
    batch = tokens.shape[0]
    memory_tokens = memory.repeat(batch).tokens.to(tokens.dtype)
    memory_positions = latent_to_token_positions(memory.positions.to(positions), patch_size).expand(batch, -1, -1)
    return torch.cat((tokens, memory_tokens), dim=1), torch.cat((positions, memory_positions), dim=1)


def drop_memory(tokens: torch.Tensor, video_token_count: int) -> torch.Tensor:
    """Memory tokens only inform the video tokens: the head never sees them."""
    return tokens[:, :video_token_count]


def save_memory(memory: Memory, path: str | Path) -> Path:
    """Safetensors with the history length in the metadata; written atomically."""
    return save_tensors({"tokens": memory.tokens.float(), "positions": memory.positions.float()}, path,
                        {"pfp_kind": "memory", "latent_frames": str(memory.latent_frames), "seconds": str(memory.seconds)})


def load_memory(path: str | Path) -> Memory:
    from .checkpoint import CheckpointError, read_safetensors

    tensors, metadata = read_safetensors(path, "memory")
    if metadata.get("pfp_kind") != "memory" or {"tokens", "positions"} - set(tensors):
        raise CheckpointError(f"memory: {Path(path).name} is not a saved PFP memory; save one with PFP Save Memory")
    tokens, positions = tensors["tokens"], tensors["positions"]
    try:
        latent_frames, seconds = int(metadata["latent_frames"]), float(metadata["seconds"])
    except (KeyError, ValueError):  # refused below with the values it holds
        latent_frames, seconds = -1, math.nan
    if tokens.dim() != 3 or positions.shape != (tokens.shape[1], 3) or latent_frames < 0 or not math.isfinite(seconds):
        raise CheckpointError(f"memory: {Path(path).name} is damaged (tokens {list(tokens.shape)}, positions "
                              f"{list(positions.shape)}, latent_frames {metadata.get('latent_frames')!r}, seconds "
                              f"{metadata.get('seconds')!r}); save the memory again with PFP Save Memory")
    return Memory(tokens, positions, latent_frames, seconds)
