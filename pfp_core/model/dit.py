"""Wan 2.1 / 2.2 diffusion transformer with the parameter names of the original Wan release.

The modules below only hold parameters (a Block's forward just calls block_forward); the math is in the flat
functions after them, which take any module tree with Wan's names. That is what lets ComfyUI's own WanModel
(comfy.ops layers, fp8, offloading) run the exact same forward, memory injection included.
"""
from __future__ import annotations

import math
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from .attention import attention
from ..config import DiTConfig
from .memory import Memory, change_input, change_skip, context_tokens, drop_memory, join_memory
from .rope import apply_rope, grid_positions, rope_angles


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return normed.type_as(x) * self.weight.to(x.dtype)


class SelfAttention(nn.Module):
    def __init__(self, dim: int, num_heads: int, eps: float):
        super().__init__()
        self.num_heads = num_heads
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.norm_q, self.norm_k = RMSNorm(dim, eps), RMSNorm(dim, eps)


class CrossAttention(SelfAttention):
    def __init__(self, dim: int, num_heads: int, eps: float, image_input: bool):
        super().__init__(dim, num_heads, eps)
        if image_input:  # Wan i2v: a second key/value set for CLIP image tokens
            self.k_img, self.v_img = nn.Linear(dim, dim), nn.Linear(dim, dim)
            self.norm_k_img = RMSNorm(dim, eps)


class Block(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        dim = cfg.dim
        self.norm1 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.self_attn = SelfAttention(dim, cfg.num_heads, cfg.eps)
        self.norm3 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=True)
        self.cross_attn = CrossAttention(dim, cfg.num_heads, cfg.eps, image_input=cfg.model_type == "i2v")
        self.norm2 = nn.LayerNorm(dim, cfg.eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, cfg.ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(cfg.ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / dim**0.5)

    def forward(self, x: torch.Tensor, time_mod: torch.Tensor, angles: torch.Tensor, context: torch.Tensor,
                image_tokens: int, context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        return block_forward(self, x, time_mod, angles, context, image_tokens, context_kv)


class Head(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.dim, cfg.eps, elementwise_affine=False)
        self.head = nn.Linear(cfg.dim, cfg.out_dim * math.prod(cfg.patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, cfg.dim) / cfg.dim**0.5)


class MLPProj(nn.Module):
    def __init__(self, dim: int, clip_dim: int = 1280):
        super().__init__()
        self.proj = nn.Sequential(nn.LayerNorm(clip_dim), nn.Linear(clip_dim, clip_dim), nn.GELU(),
                                  nn.Linear(clip_dim, dim), nn.LayerNorm(dim))


class WanDiT(nn.Module):
    def __init__(self, cfg: DiTConfig):
        super().__init__()
        self.config = cfg
        self.patch_size = cfg.patch_size
        self.freq_dim = cfg.freq_dim
        self.num_heads = cfg.num_heads
        self.patch_embedding = nn.Conv3d(cfg.in_dim, cfg.dim, kernel_size=cfg.patch_size, stride=cfg.patch_size)
        self.text_embedding = nn.Sequential(nn.Linear(cfg.text_dim, cfg.dim), nn.GELU(approximate="tanh"),
                                            nn.Linear(cfg.dim, cfg.dim))
        self.time_embedding = nn.Sequential(nn.Linear(cfg.freq_dim, cfg.dim), nn.SiLU(), nn.Linear(cfg.dim, cfg.dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(cfg.dim, cfg.dim * 6))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.head = Head(cfg)
        if cfg.model_type == "i2v":
            self.img_emb = MLPProj(cfg.dim)
        self.grad_checkpointing = False  # training: recompute each block in backward instead of keeping activations
        self.init_weights()

    def init_weights(self) -> None:
        """Wan's initialisation: xavier linears, small embeddings, a zero head so training starts at v = 0."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)
        nn.init.xavier_uniform_(self.patch_embedding.weight.flatten(1))
        for module in (*self.text_embedding, *self.time_embedding):
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, std=0.02)
        nn.init.zeros_(self.head.head.weight)

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                memory: Memory | None = None, frame_times: torch.Tensor | None = None,
                clip_fea: torch.Tensor | None = None, context_cache: "ContextCache | None" = None) -> torch.Tensor:
        return wan_forward(self, latents, timestep, context, memory, frame_times, clip_fea, context_cache)


def sinusoidal_embedding(dim: int, timestep: torch.Tensor) -> torch.Tensor:
    half = dim // 2
    angles = torch.outer(timestep.float(), torch.pow(10000, -torch.arange(half, device=timestep.device).float() / half))
    return torch.cat((angles.cos(), angles.sin()), dim=1)


def _param(p: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return p.to(device=like.device, dtype=like.dtype)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def project_qkv(attn: nn.Module, x: torch.Tensor, angles: torch.Tensor) -> tuple[torch.Tensor, ...]:
    q = apply_rope(attn.norm_q(attn.q(x)), angles, attn.num_heads)
    k = apply_rope(attn.norm_k(attn.k(x)), angles, attn.num_heads)
    return q, k, attn.v(x)


def self_attention(attn: nn.Module, x: torch.Tensor, angles: torch.Tensor,
                   context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Attention over x itself and, under the clean-context pattern, over the context's keys and values too."""
    q, k, v = project_qkv(attn, x, angles)
    if context_kv is not None:
        context_k, context_v = (t.to(x.dtype).expand(x.shape[0], -1, -1) for t in context_kv)
        k, v = torch.cat((k, context_k), dim=1), torch.cat((v, context_v), dim=1)
    return attn.o(attention(q, k, v, attn.num_heads))


def cross_attention(attn: nn.Module, x: torch.Tensor, context: torch.Tensor, image_tokens: int) -> torch.Tensor:
    q = attn.norm_q(attn.q(x))
    image_context, text_context = context[:, :image_tokens], context[:, image_tokens:]
    out = attention(q, attn.norm_k(attn.k(text_context)), attn.v(text_context), attn.num_heads)
    if image_tokens:
        out = out + attention(q, attn.norm_k_img(attn.k_img(image_context)), attn.v_img(image_context), attn.num_heads)
    return attn.o(out)


def block_forward(block: nn.Module, x: torch.Tensor, time_mod: torch.Tensor, angles: torch.Tensor,
                  context: torch.Tensor, image_tokens: int,
                  context_kv: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """One Wan block. time_mod [B, 6, dim]: shift/scale/gate for attention, then for the FFN."""
    shift1, scale1, gate1, shift2, scale2, gate2 = (_param(block.modulation, x) + time_mod).chunk(6, dim=1)
    x = x + gate1 * self_attention(block.self_attn, modulate(block.norm1(x), shift1, scale1), angles, context_kv)
    x = x + cross_attention(block.cross_attn, block.norm3(x), context, image_tokens)
    return x + gate2 * block.ffn(modulate(block.norm2(x), shift2, scale2))


def context_block_forward(block: nn.Module, x: torch.Tensor, time_mod: torch.Tensor,
                          angles: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """One block of the clean context stream: the context attends among itself only and skips the text, so
    its keys and values depend on nothing that changes within a chunk (noise level, CFG half)."""
    shift1, scale1, gate1, shift2, scale2, gate2 = (_param(block.modulation, x) + time_mod).chunk(6, dim=1)
    q, k, v = project_qkv(block.self_attn, modulate(block.norm1(x), shift1, scale1), angles)
    x = x + gate1 * block.self_attn.o(attention(q, k, v, block.self_attn.num_heads))
    return x + gate2 * block.ffn(modulate(block.norm2(x), shift2, scale2)), (k, v)


def time_modulation(model: nn.Module, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """(time embedding [B, dim], per-block modulation [B, 6, dim]) for timesteps [B] in 0..1000."""
    time_emb = model.time_embedding(sinusoidal_embedding(model.freq_dim, timestep).to(dtype))
    return time_emb, model.time_projection(time_emb).unflatten(1, (6, -1))


def context_stream(model: nn.Module, memory: Memory, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per-block keys and values of the context at timestep 0 (clean), for the memory's own batch."""
    tokens, positions = context_tokens(model, memory, memory.batch)
    tokens = tokens.to(dtype)
    angles = rope_angles(positions, tokens.shape[-1] // model.num_heads)
    _, time_mod = time_modulation(model, torch.zeros(memory.batch, device=tokens.device), dtype)
    layers = []
    for block in model.blocks:
        tokens, keys_values = context_block_forward(block, tokens, time_mod, angles)
        layers.append(keys_values)
    return layers


class ContextCache:
    """The clean context's keys and values for one chunk: computed by the first DiT call, reused by every later
    denoising step and both CFG halves. Make a new one for each chunk (a new memory)."""

    def __init__(self) -> None:
        self.layers: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    def get(self, model: nn.Module, memory: Memory, dtype: torch.dtype) -> list[tuple[torch.Tensor, torch.Tensor]]:
        if torch.is_grad_enabled():  # training: gradients flow through the context every step
            return context_stream(model, memory, dtype)
        if self.layers is None:
            self.layers = context_stream(model, memory, dtype)
        return self.layers


def head_forward(head: nn.Module, x: torch.Tensor, time_emb: torch.Tensor) -> torch.Tensor:
    shift, scale = (_param(head.modulation, x) + time_emb[:, None]).chunk(2, dim=1)
    return head.head(modulate(head.norm(x), shift, scale))


def unpatchify(x: torch.Tensor, grid: tuple[int, int, int], patch: tuple[int, int, int]) -> torch.Tensor:
    """[B, t*h*w, C*pt*ph*pw] -> [B, C, t*pt, h*ph, w*pw] (Wan's channel-last patch order)."""
    b = x.shape[0]
    (t, h, w), (pt, ph, pw) = grid, patch
    x = x.view(b, t, h, w, pt, ph, pw, -1)
    return x.permute(0, 7, 1, 4, 2, 5, 3, 6).reshape(b, -1, t * pt, h * ph, w * pw)


def wan_forward(model: nn.Module, latents: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor,
                memory: Memory | None = None, frame_times: torch.Tensor | None = None,
                clip_fea: torch.Tensor | None = None, context_cache: ContextCache | None = None) -> torch.Tensor:
    """Velocity prediction for latents [B, C, T, H, W] at timestep [B] (0..1000) with text context [B, L, text_dim].

    frame_times [T] or [B, T]: the time position (in latent frames) of each input frame; default 0..T-1.
    Retrieval puts the noised frames at their place inside the history; generation puts a chunk right after it.
    Memory joins the video tokens (the joint pattern), or, when memory.clean_context, runs as its own clean stream
    whose keys and values every block's video tokens also attend to (`context_cache` keeps them for a chunk).
    """
    patch = tuple(model.patch_size)
    read = change_input(latents, memory)
    x = model.patch_embedding(read.float()).to(latents.dtype)
    grid = tuple(x.shape[2:])
    x = x.flatten(2).transpose(1, 2)
    if frame_times is None:
        frame_times = torch.arange(grid[0], device=x.device)
    frame_times = frame_times.to(x.device).expand(x.shape[0], -1)
    positions = grid_positions(frame_times, grid[1], grid[2])
    object_shift = None
    if memory is not None:
        positions = memory.placed(positions)
        object_shift = memory.object_shift(frame_times, grid[1] * grid[2])
    video_tokens = x.shape[1]
    context_layers = [None] * len(model.blocks)
    if memory is not None and memory.clean_context and memory.token_count:
        context_layers = (context_cache or ContextCache()).get(model, memory, x.dtype)
    else:
        x, positions = join_memory(model, x, positions, memory)
    if object_shift is not None:  # joined context tokens stay at shift 0
        object_shift = F.pad(object_shift.to(positions.device), (0, positions.shape[1] - object_shift.shape[1]))
    angles = rope_angles(positions, x.shape[-1] // model.num_heads, object_shift=object_shift)

    time_emb, time_mod = time_modulation(model, timestep, x.dtype)
    context = model.text_embedding(context.to(x.dtype))
    image_tokens = 0
    if clip_fea is not None and getattr(model, "img_emb", None) is not None:
        context = torch.cat((model.img_emb(clip_fea.to(x.dtype)), context), dim=1)
        image_tokens = clip_fea.shape[1]

    # ComfyUI's WanModel runs this function too and has no grad_checkpointing attribute
    recompute = getattr(model, "grad_checkpointing", False) and torch.is_grad_enabled()
    for block, context_kv in zip(model.blocks, context_layers):
        # our blocks are called as modules, so FSDP's hooks gather a sharded block; ComfyUI's have another forward
        run = block if isinstance(block, Block) else partial(block_forward, block)
        if recompute:
            x = checkpoint(run, x, time_mod, angles, context, image_tokens, context_kv, use_reentrant=False)
        else:
            x = run(x, time_mod, angles, context, image_tokens, context_kv)
    x = unpatchify(head_forward(model.head, drop_memory(x, video_tokens), time_emb), grid, patch)
    skip = change_skip(timestep, memory)
    return x if skip is None else x + (skip * read.float()).to(x.dtype)
