"""3D rotary position embedding as in Wan: the head dimension is split into (t, h, w) parts and each part
rotates interleaved pairs by position * theta^(-2i/d). Positions are floats, so memory tokens can sit at the
centre of the region they summarise."""
from __future__ import annotations

import torch


def axis_dims(head_dim: int) -> tuple[int, int, int]:
    """Wan's split of a head between time, height and width."""
    third = 2 * (head_dim // 6)
    return head_dim - 2 * third, third, third


def rope_angles(positions: torch.Tensor, head_dim: int, theta: float = 10000.0,
                object_shift: torch.Tensor | None = None) -> torch.Tensor:
    """positions [..., L, 3] (t, h, w) -> angles [..., L, head_dim // 2]. With `object_shift` [..., L], the odd
    pairs of the w part (every other frequency, so both halves keep fine and coarse ones) rotate by w minus the
    shift: the column a moving object had at rest (pfp_core.model.objects). A zero shift changes nothing."""
    angles = []
    for axis, dim in enumerate(axis_dims(head_dim)):
        inv_freq = theta ** (-torch.arange(0, dim, 2, dtype=torch.float64, device=positions.device) / dim)
        position = positions[..., axis, None].double()
        if axis == 2 and object_shift is not None:
            odd = torch.arange(inv_freq.shape[0], device=positions.device) % 2 == 1
            position = torch.where(odd, position - object_shift[..., None].double(), position)
        angles.append(position * inv_freq)
    return torch.cat(angles, dim=-1).float()


def apply_rope(x: torch.Tensor, angles: torch.Tensor, heads: int) -> torch.Tensor:
    """x [B, L, heads * head_dim], angles [L, d/2] or [B, L, d/2]: rotate each interleaved pair (x[2i], x[2i+1])."""
    b, length, inner = x.shape
    pairs = x.float().view(b, length, heads, inner // heads // 2, 2)
    cos, sin = angles.cos().unsqueeze(-2), angles.sin().unsqueeze(-2)
    even, odd = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((even * cos - odd * sin, even * sin + odd * cos), dim=-1)
    return rotated.view(b, length, inner).type_as(x)


def grid_positions(frame_times: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Token positions [B, T*h*w, 3] for latent frames at times `frame_times` [B, T] on an h x w token grid."""
    t = frame_times.float()[:, :, None, None].expand(-1, -1, height, width)
    h = torch.arange(height, dtype=torch.float32, device=t.device)[:, None].expand_as(t)
    w = torch.arange(width, dtype=torch.float32, device=t.device).expand_as(t)
    return torch.stack((t, h, w), dim=-1).flatten(1, 3)
