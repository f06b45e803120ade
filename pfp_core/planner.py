"""Budget planner: what a history length and memory rate cost on a given Wan DiT, before anything is built.

Everything here is arithmetic on the configs in `pfp_core.config`; no module is instantiated. The counts mirror
the modules in `pfp_core.model.dit` and `pfp_core.model.encoder` one layer at a time, and the tests check them against
`sum(p.numel())` of meta-built modules, against `torch.utils.flop_counter.FlopCounterMode` and, for memory,
against peaks measured on CPU by `pfp_core.bench.peak_memory.PeakMemory` (`bench planner`).

Conventions:
- A clip of s seconds at f fps has round(s * f) + 1 frames (Wan's 4k+1: 5 s at 16 fps = 81 frames); a causal VAE
  with temporal factor tf turns n frames into 1 + (n - 1) // tf latent frames (20 s at 16 fps -> 81).
- FLOPs are 2 x multiply-accumulates of matrix products and convolutions; elementwise work (norms, RoPE,
  activations, modulation) is not counted, matching FlopCounterMode.
- GB are 1e9 bytes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from .config import DiTConfig, EncoderConfig, Rate, VAES, VAEConfig, dit_config, encoder_config_for

GPU_BUDGET_GB = 12.0
CLIP_IMAGE_DIM = 1280  # MLPProj input width of Wan i2v (CLIP ViT-H features)


# ---------------------------------------------------------------------------------------------- shapes


def frame_count(seconds: float, fps: float) -> int:
    """Video frames of a clip: Wan's round(seconds * fps) + 1."""
    return round(seconds * fps) + 1


def latent_frame_count(frames: int, temporal_factor: int) -> int:
    """Frames -> latent frames of a causal VAE (the first frame is encoded alone)."""
    return 1 + (frames - 1) // temporal_factor


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def memory_grid(latent_shape: tuple[int, int, int], stride: tuple[int, int, int]) -> tuple[int, int, int]:
    """(t, h, w) memory cells for history latents (T, H, W): ceil division, as `encoder.pad_to_cells` pads up."""
    return tuple(ceil_div(size, s) for size, s in zip(latent_shape, stride))  # type: ignore[return-value]


def memory_token_count(enc: EncoderConfig, latent_shape: tuple[int, int, int]) -> int:
    return math.prod(memory_grid(latent_shape, enc.latent_stride))


# ---------------------------------------------------------------------------------------------- parameters


def _linear(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


def _conv(n_in: int, n_out: int, kernel: tuple[int, ...]) -> int:
    return n_in * n_out * math.prod(kernel) + n_out


def block_param_count(cfg: DiTConfig) -> int:
    """One Wan block: self-attn (q k v o + RMSNorm q, k), cross-attn (+ image k, v, norm for i2v), norm3, FFN,
    modulation. norm1 / norm2 have no affine parameters."""
    d = cfg.dim
    self_attn = 4 * _linear(d, d) + 2 * d
    cross_attn = self_attn + (2 * _linear(d, d) + d if cfg.model_type == "i2v" else 0)
    ffn = _linear(d, cfg.ffn_dim) + _linear(cfg.ffn_dim, d)
    return self_attn + cross_attn + 2 * d + ffn + 6 * d


def dit_param_groups(cfg: DiTConfig) -> dict[str, int]:
    """Parameters per top-level module of WanDiT; `block` is ONE of the num_layers blocks."""
    d = cfg.dim
    patch_out = cfg.out_dim * math.prod(cfg.patch_size)
    groups = {
        "patch_embedding": _conv(cfg.in_dim, d, cfg.patch_size),
        "text_embedding": _linear(cfg.text_dim, d) + _linear(d, d),
        "time_embedding": _linear(cfg.freq_dim, d) + _linear(d, d),
        "time_projection": _linear(d, 6 * d),
        "block": block_param_count(cfg),
        "head": _linear(d, patch_out) + 2 * d,
    }
    if cfg.model_type == "i2v":
        c = CLIP_IMAGE_DIM
        groups["img_emb"] = 2 * c + _linear(c, c) + _linear(c, d) + 2 * d
    return groups


def dit_param_count(cfg: DiTConfig) -> int:
    groups = dit_param_groups(cfg)
    return sum(groups.values()) + (cfg.num_layers - 1) * groups["block"]


def _slab_attention_params(width: int) -> int:
    return 4 * width + _linear(width, 3 * width) + _linear(width, width) + _linear(width, 4 * width) + _linear(4 * width, width)


def _lr_kernel(enc: EncoderConfig) -> tuple[int, int, int]:
    """LowResBranch's patchify kernel after pooling by gcd(lr_downsample, cell)."""
    st, sh, sw = enc.latent_stride
    pool = math.gcd(enc.lr_downsample, sh, sw)
    return st, sh // pool, sw // pool


def encoder_param_count(enc: EncoderConfig) -> int:
    """MemoryEncoder parameters for any variant."""
    w, total = enc.width, 0
    if enc.variant == "large_patchifier":
        total += _conv(enc.in_channels, enc.dim, enc.latent_stride)
    if enc.variant in ("proposed", "only_lr"):
        total += _conv(enc.in_channels, enc.dim, _lr_kernel(enc))
    if enc.variant in ("proposed", "without_lr"):
        total += _conv(enc.in_channels, w, (1, 3, 3)) + enc.hr_blocks * 2 * _conv(w, w, (1, 3, 3))
        total += _conv(w, w, enc.latent_stride) + enc.attn_layers * _slab_attention_params(w) + _linear(w, enc.dim)
    if enc.variant == "proposed":
        total += enc.dim  # hr_gate
    return total


# ---------------------------------------------------------------------------------------------- FLOPs


def dit_flops(cfg: DiTConfig, video_tokens: int, context_tokens: int, text_tokens: int) -> int:
    """FLOPs of one t2v forward at batch 1. L = video + context tokens (memory or history joined to the chunk).

    per block: linear 2*L*(4d^2 [q k v o] + 2d^2 [cross q, o] + 2*d*ffn) + 2*text*2d^2 [cross k, v]
               attention 4*L^2*d [self: QK^T and AV] + 4*L*text*d [cross]
    once:      patch embedding and head on the video tokens only (memory joins after the patch embedding and
               leaves before the head), text embedding on the text tokens, time embedding + projection.
    """
    d, f, n = cfg.dim, cfg.ffn_dim, video_tokens + context_tokens
    patch = math.prod(cfg.patch_size)
    block = 2 * n * (6 * d * d + 2 * d * f) + 4 * text_tokens * d * d + 4 * n * n * d + 4 * n * text_tokens * d
    embed = 2 * video_tokens * patch * d * (cfg.in_dim + cfg.out_dim) + 2 * text_tokens * (cfg.text_dim * d + d * d)
    time = 2 * (cfg.freq_dim * d + d * d + 6 * d * d)
    return cfg.num_layers * block + embed + time


def context_stream_flops(cfg: DiTConfig, context_tokens: int) -> int:
    """FLOPs of the clean context stream, once per chunk: per block the context's own q k v o and FFN, and its
    attention among itself (no text cross-attention)."""
    d, m = cfg.dim, context_tokens
    return cfg.num_layers * (2 * m * (4 * d * d + 2 * d * cfg.ffn_dim) + 4 * m * m * d)


def cached_step_flops(cfg: DiTConfig, video_tokens: int, context_tokens: int, text_tokens: int) -> int:
    """One forward of the chunk's tokens over the cached context: the video tokens' own work (dit_flops with no
    context) plus their attention to the context's keys and values."""
    return dit_flops(cfg, video_tokens, 0, text_tokens) + cfg.num_layers * 4 * video_tokens * context_tokens * cfg.dim


CHUNK_STEPS = 8  # per-chunk FLOPs: 8 sampling steps with CFG (two forwards a step)


def chunk_flops(cfg: DiTConfig, video_tokens: int, context_tokens: int, text_tokens: int, steps: int,
                cfg_halves: int, cached: bool) -> int:
    """DiT FLOPs of sampling one chunk: `steps` steps of `cfg_halves` forwards (2 with guidance), the context
    either cached (its stream once) or joined to every forward."""
    forwards = steps * cfg_halves
    if cached and context_tokens:
        return context_stream_flops(cfg, context_tokens) + forwards * cached_step_flops(cfg, video_tokens,
                                                                                       context_tokens, text_tokens)
    return forwards * dit_flops(cfg, video_tokens, context_tokens, text_tokens)


def chunk_flops_by_path(cfg: DiTConfig, video_tokens: int, context_tokens: int, text_tokens: int,
                        full_history_tokens: int | None = None) -> dict[str, int]:
    """Per-chunk DiT FLOPs (CHUNK_STEPS steps with CFG) for each way a chunk can see its past: the cached clean
    context, the per-step (joint) context, no history, and optionally the raw full history."""
    paths = {"cached": (context_tokens, True), "per_step": (context_tokens, False), "no_history": (0, False)}
    if full_history_tokens is not None:
        paths["full_history"] = (full_history_tokens, False)
    return {path: chunk_flops(cfg, video_tokens, tokens, text_tokens, CHUNK_STEPS, 2, cached)
            for path, (tokens, cached) in paths.items()}


def encoder_flops(enc: EncoderConfig, latent_shape: tuple[int, int, int]) -> int:
    """FLOPs (2 x MACs) of MemoryEncoder on history latents (T, H, W), padded up to whole cells first.

    Convolutions: stride-1 convs cost voxels * c_in * c_out * kernel, strided ones cells * c_in * c_out * kernel.
    The HR branch's slab attention: linears per memory token plus QK^T / AV within each temporal slab.
    Average pooling, SiLU, norms and the gate are elementwise and not counted.
    """
    grid = memory_grid(latent_shape, enc.latent_stride)
    cells, slab_tokens = math.prod(grid), grid[1] * grid[2]
    voxels = cells * math.prod(enc.latent_stride)  # padded T * H * W
    c, w, macs = enc.in_channels, enc.width, 0
    if enc.variant == "large_patchifier":
        macs += cells * c * enc.dim * math.prod(enc.latent_stride)
    if enc.variant in ("proposed", "only_lr"):
        macs += cells * c * enc.dim * math.prod(_lr_kernel(enc))
    if enc.variant in ("proposed", "without_lr"):
        macs += voxels * 9 * w * (c + 2 * enc.hr_blocks * w)  # stem + residual blocks
        macs += cells * w * w * math.prod(enc.latent_stride)  # strided downsample
        macs += enc.attn_layers * (cells * 12 * w * w + 2 * cells * slab_tokens * w)  # qkv, proj, mlp; QK^T, AV
        macs += cells * w * enc.dim  # out
    return 2 * macs


# ---------------------------------------------------------------------------------------------- memory

FLOAT32 = 4


def rope_angle_bytes(cfg: DiTConfig) -> int:
    """Bytes per token of one float32 RoPE table: head_dim / 2 angles."""
    return cfg.head_dim // 2 * FLOAT32


def activation_bytes(cfg: DiTConfig, tokens: int, dtype_bytes: int) -> int:
    """Peak bytes one DiT forward allocates beyond its weights and inputs, over `tokens` = batch x (video + memory)
    tokens, in eager PyTorch with a memory-efficient attention kernel (no L^2 matrix); `bench planner` measures it.
    The peak is inside a block, at the larger of two moments. Per token, with d = dim and f = ffn_dim:

    ffn:  the block input (the caller still holds it), the residual after attention, the modulated FFN input and
          the FFN hidden state twice (Linear and GELU outputs): (3d + 2f) x dtype
    rope: the block input, the modulated attention input, rotated q and normed k (4d x dtype), then apply_rope's
          float32 work on k: a float32 copy (none when k is float32 already), four half-width products (2d
          float32) and its cos and sin tables
    Both moments also hold what lives for the whole forward: the RoPE angles and the (t, h, w) token positions.
    """
    d, f = cfg.dim, cfg.ffn_dim
    ffn = (3 * d + 2 * f) * dtype_bytes
    k_float32_copy = d * FLOAT32 if dtype_bytes != FLOAT32 else 0
    rope = 4 * d * dtype_bytes + k_float32_copy + 2 * d * FLOAT32 + 2 * rope_angle_bytes(cfg)
    whole_forward = rope_angle_bytes(cfg) + 3 * FLOAT32
    return tokens * (max(ffn, rope) + whole_forward)


def encoder_activation_bytes(enc: EncoderConfig, latent_shape: tuple[int, int, int], dtype_bytes: int) -> int:
    """Peak bytes MemoryEncoder allocates beyond its weights and inputs on history latents (T, H, W), batch 1.

    The HR variants peak in the residual block at full latent resolution: three feature maps of `width` channels
    (the stem output, the first conv's activated output, the second conv's output). The LR-only variant holds
    the pooled latents instead. Both add the padded copy of the latents (only when T, H or W is not a whole
    number of cells) and the memory tokens (for `proposed`, the LR tokens wait for the HR branch)."""
    grid = memory_grid(latent_shape, enc.latent_stride)
    padded_shape = tuple(g * s for g, s in zip(grid, enc.latent_stride))
    voxels = math.prod(padded_shape)
    padded_copy = voxels * enc.in_channels if padded_shape != tuple(latent_shape) else 0
    pool = math.gcd(enc.lr_downsample, *enc.latent_stride[1:])
    feature_maps = {"proposed": 3 * voxels * enc.width, "without_lr": 3 * voxels * enc.width,
                    "only_lr": voxels // pool**2 * enc.in_channels, "large_patchifier": 0}[enc.variant]
    return (padded_copy + feature_maps + math.prod(grid) * enc.dim) * dtype_bytes


def largest_layer_params(cfg: DiTConfig, enc: EncoderConfig) -> int:
    """Parameters of the largest single layer ComfyUI moves or casts at once (it streams weights one Linear or
    Conv at a time): an FFN Linear, the text or time projection, the patch embedding or the head; the encoder,
    being small, counts as one layer."""
    d, patch = cfg.dim, math.prod(cfg.patch_size)
    return max(_linear(d, cfg.ffn_dim), _linear(cfg.ffn_dim, d), _linear(cfg.text_dim, d), _linear(d, 6 * d),
               _conv(cfg.in_dim, d, cfg.patch_size), _linear(d, cfg.out_dim * patch), encoder_param_count(enc))


# ---------------------------------------------------------------------------------------------- ComfyUI, 12 GB

# Parameters of ComfyUI 0.3.64's own modules built on the meta device: comfy.ldm.wan.vae.WanVAE (dim 96),
# comfy.ldm.wan.vae2_2.WanVAE (dim 160) and comfy.text_encoders.t5.T5 (umt5_config_xxl.json). They match Comfy-Org's
# files: wan_2.1_vae 254 MB and wan2.2_vae 1.41 GB in bf16, umt5_xxl_fp16 11.4 GB, umt5_xxl_fp8_e4m3fn_scaled 6.7 GB.
VAE_PARAMS = {"wan2.1": 126_892_531, "wan2.2": 704_688_668}
UMT5_XXL_PARAMS = 5_680_910_336
UMT5_XXL_EMBEDDING = 256_384 * 4096  # the fp8_scaled file keeps the token embedding in bf16
# comfy/sd.py memory_used_decode of the Wan VAEs: factor x latent height x latent width x dtype bytes
VAE_DECODE_FACTOR = {"wan2.1": 7000 * 8 * 8, "wan2.2": 8000 * 16 * 16}
VAE_TILE_PIXELS = 256  # the tile ComfyUI falls back to when a full decode runs out of memory
BF16 = 2  # ComfyUI computes Wan in bf16: activations, and weights cast for one layer
WEIGHT_BYTES = {"bf16": 2, "fp8_e4m3fn": 1, "fp32": 4}
TEXT_ENCODER_BYTES = {"fp8 on GPU": (UMT5_XXL_PARAMS - UMT5_XXL_EMBEDDING) + UMT5_XXL_EMBEDDING * BF16, "CPU": 0}


@dataclass(frozen=True)
class ComfySettings:
    """One way to run PFP on Wan in ComfyUI: which weights stay on the GPU and in which dtype."""

    name: str
    how: str  # the ComfyUI flags and node widgets that give it
    dit_weights: str  # Load Diffusion Model weight_dtype: "bf16" (Comfy-Org's file as is) or "fp8_e4m3fn"
    dit_resident: str  # "all", "partial" (ComfyUI fills the free VRAM, streams the rest) or "none"
    text_encoder: str  # a key of TEXT_ENCODER_BYTES
    vae_decode: str  # "full" or "tiled"
    encoder_dtype: str  # PFP Load Memory Encoder dtype: "bf16" or "fp32"


COMFY_SETTINGS = (
    ComfySettings("bf16 DiT, all resident", "default flags (ComfyUI keeps every weight on the GPU when it fits)",
                  "bf16", "all", "fp8 on GPU", "full", "fp32"),
    ComfySettings("fp8 DiT, all resident", "Load Diffusion Model weight_dtype fp8_e4m3fn",
                  "fp8_e4m3fn", "all", "fp8 on GPU", "full", "fp32"),
    ComfySettings("bf16 DiT, partly streamed", "default flags on NVIDIA when the weights do not fit (partial "
                  "loading), or --lowvram, which also runs the text encoder on the CPU", "bf16", "partial", "CPU",
                  "full", "fp32"),
    ComfySettings("bf16 DiT, all streamed, tiled decode", "--novram (text encoder on the CPU); ComfyUI decodes in "
                  "256-px tiles when a full decode runs out of memory", "bf16", "none", "CPU", "tiled", "bf16"),
)


def vae_decode_bytes(vae: VAEConfig, latent_hw: tuple[int, int], mode: str) -> int:
    """ComfyUI's reservation for a Wan VAE decode (comfy/sd.py memory_used_decode, bf16). It scales with a latent
    frame's area, not with the number of frames: the Wan VAEs decode frame by frame with a causal cache. Tiled:
    the same for one 256-pixel tile."""
    tile = VAE_TILE_PIXELS // vae.spatial_factor
    h, w = latent_hw if mode == "full" else (min(latent_hw[0], tile), min(latent_hw[1], tile))
    return VAE_DECODE_FACTOR[vae.name] * h * w * BF16


def comfy_phase_bytes(cfg: DiTConfig, enc: EncoderConfig, vae: VAEConfig, s: ComfySettings, step_tokens: int,
                      history_shape: tuple[int, int, int]) -> dict[str, int]:
    """VRAM that must be on the GPU in each phase of a chunk. ComfyUI unloads or partly unloads other models
    between phases, so the peak is the largest phase. Weights ComfyUI streams count only for the layers in flight
    (one computing, the next being copied), cast to bf16; so do fp8 weights, which are cast layer by layer."""
    dit_weights = dit_param_count(cfg) * WEIGHT_BYTES[s.dit_weights]
    resident = dit_weights if s.dit_resident == "all" else 0
    encoder_weights = encoder_param_count(enc) * WEIGHT_BYTES[s.encoder_dtype]
    casting = s.dit_resident != "all" or s.dit_weights != "bf16"
    layers_in_flight = 2 * largest_layer_params(cfg, enc) * BF16 if casting else 0
    encoder_activations = encoder_activation_bytes(enc, history_shape, WEIGHT_BYTES[s.encoder_dtype])
    return {
        "text_encode": TEXT_ENCODER_BYTES[s.text_encoder],
        "memory_encode": resident + encoder_weights + encoder_activations,
        "dit_step": resident + encoder_weights + layers_in_flight + activation_bytes(cfg, step_tokens, BF16),
        "vae_decode": VAE_PARAMS[vae.name] * BF16 + vae_decode_bytes(vae, history_shape[1:], s.vae_decode),
    }


def comfy_12gb(cfg: DiTConfig, enc: EncoderConfig, vae: VAEConfig, step_tokens: int,
               history_shape: tuple[int, int, int]) -> list[dict]:
    """Each of COMFY_SETTINGS with its phases, peak and verdict; streamed_per_step_gb is what a 12 GB card copies
    from RAM every DiT step (partial loading keeps what fits beside the step's needs)."""
    rows = []
    for s in COMFY_SETTINGS:
        phases = comfy_phase_bytes(cfg, enc, vae, s, step_tokens, history_shape)
        peak = max(phases, key=phases.get)
        weights = dit_param_count(cfg) * WEIGHT_BYTES[s.dit_weights]
        room = max(0, GPU_BUDGET_GB * 1e9 - phases["dit_step"])
        streamed = {"all": 0, "partial": max(0, weights - room), "none": weights}[s.dit_resident]
        rows.append({"setting": s.name, "how": s.how, "dit_weights": s.dit_weights, "dit_resident": s.dit_resident,
                     "text_encoder": s.text_encoder, "vae_decode": s.vae_decode, "encoder_dtype": s.encoder_dtype,
                     "phases_gb": {name: _gb(n) for name, n in phases.items()}, "peak_phase": peak,
                     "peak_gb": _gb(phases[peak]), "streamed_per_step_gb": _gb(streamed),
                     "fits_12gb": phases[peak] <= GPU_BUDGET_GB * 1e9})
    return rows


# ---------------------------------------------------------------------------------------------- plan


def _check_positive(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or math.isinf(value):
        raise ValueError(f"{name}: must be a positive number, got {value!r}")


def _check_size(name: str, value: Any, vae: VAEConfig, cfg: DiTConfig) -> None:
    patch = cfg.patch_size[1] if name == "height" else cfg.patch_size[2]
    multiple = vae.spatial_factor * patch
    if not isinstance(value, int) or value % multiple:
        raise ValueError(f"{name}: {value!r} is not a multiple of {multiple} (the {vae.name} VAE's "
                         f"{vae.spatial_factor}x downscale times the DiT's {patch}x patch)")


def _validate(model: str, width: int, height: int, numbers: dict[str, Any]) -> DiTConfig:
    cfg = dit_config(model)  # unknown names raise "model: 'x' is unknown; use one of ..."
    for name, value in {"width": width, "height": height, **numbers}.items():
        _check_positive(name, value)
    for name in ("dtype_bytes", "text_tokens", "batch"):
        if not isinstance(numbers[name], int):
            raise ValueError(f"{name}: must be a whole number, got {numbers[name]!r}")
    vae = VAES[cfg.vae]
    _check_size("width", width, vae, cfg)
    _check_size("height", height, vae, cfg)
    return cfg


def _gb(n_bytes: float) -> float:
    return round(n_bytes / 1e9, 3)


def _notes(cfg: DiTConfig, vae: VAEConfig) -> list[str]:
    return [
        f"frames = round(seconds * fps) + 1; latent frames = 1 + (frames - 1) // {vae.temporal_factor} "
        f"({vae.name} VAE, causal, {vae.spatial_factor}x spatial); DiT patch {'x'.join(map(str, cfg.patch_size))}",
        "memory_tokens: ceil division of the history's latent T, H, W by the memory cell (the encoder pads up)",
        "attention_flops_ratio = (chunk + full_history)^2 / (chunk + memory)^2: joint self-attention of the chunk "
        "with its context, the L^2 part only",
        "dit_flops_per_step_*: one forward at batch 1 (double for CFG); per block 2*L*(6d^2 + 2*d*ffn) + "
        "4*text*d^2 linear, 4*L^2*d self-attention, 4*L*text*d cross-attention; plus embeddings and head",
        "encoder_flops: one pass over the whole history (the generator re-encodes only new slabs)",
        "FLOPs = 2 x MACs of matmuls and convolutions; elementwise ops are not counted",
        "activation_gb: the peak of one DiT step over batch x (chunk + memory) tokens (batch 2: CFG's cond and "
        "uncond together, as ComfyUI runs them when memory allows): the larger of the FFN moment (3d + 2*ffn per "
        "token) and the RoPE moment (4d + float32 RoPE work), plus the RoPE angles; memory-efficient attention (no "
        "L^2 matrix); within 1% of peaks measured on CPU (docs/results/planner.md)",
        "weights_offloaded: the largest layer twice (one computing, the next being copied), as ComfyUI's partial "
        "loading streams weights one Linear or Conv at a time",
        "ram_estimate_gb: offloaded weights + fp32 latents (history and LATENT output) + one chunk of frames: "
        "the sampler's VIDEO streams the chunks from disk; ram_as_image_gb holds the whole video as ComfyUI's "
        "float32 IMAGE instead (what a frames-out sampler, or Video Frames over the whole run, takes)",
        f"fits_12gb compares against {GPU_BUDGET_GB:g} GB = 1e9 bytes (a 12 GiB card keeps ~0.9 GB for the CUDA "
        "context and ComfyUI's 0.4 GB reserve); vram_estimate_gb is the DiT step only",
        "comfyui_12gb: every phase of a chunk under ComfyUI settings (text encode with UMT5-XXL, memory encode of "
        "the whole history, DiT step, VAE decode at ComfyUI's own reservation); estimates, not measured on a GPU",
    ]


def ram_bytes(cfg: DiTConfig, vae: VAEConfig, width: int, height: int, video_frames: int, weights: int,
              held_frames: int) -> int:
    """Host RAM of a whole run: offloaded weights, fp32 latents twice (the history and the returned LATENT), and
    `held_frames` frames as float32 pixels plus uint8: one chunk when the video streams from disk (VIDEO), the
    whole video when it is returned as an IMAGE."""
    latent_frames = latent_frame_count(video_frames, vae.temporal_factor)
    latents = latent_frames * cfg.in_dim * (height // vae.spatial_factor) * (width // vae.spatial_factor) * 4
    return weights + 2 * latents + held_frames * height * width * 3 * (4 + 1)


def plan(model: str, width: int, height: int, fps: float, history_seconds: float, rate: str = "4x4x2",
         chunk_seconds: float = 5.0, dtype_bytes: int = 2, text_tokens: int = 512,
         video_seconds: float | None = None, batch: int = 2, recent_frames: int = 0) -> dict:
    """Tokens, FLOPs, parameters and VRAM of generating one chunk after `history_seconds` of history, of which the
    last `recent_frames` latent frames join the context uncompressed and the rest is compressed memory, and the
    RAM of a whole `video_seconds` run (default: as long as the history)."""
    video_seconds = history_seconds if video_seconds is None else video_seconds
    cfg = _validate(model, width, height, {"fps": fps, "history_seconds": history_seconds,
                                           "chunk_seconds": chunk_seconds, "dtype_bytes": dtype_bytes,
                                           "text_tokens": text_tokens, "video_seconds": video_seconds,
                                           "batch": batch})
    if isinstance(recent_frames, bool) or not isinstance(recent_frames, int) or recent_frames < 0:
        raise ValueError(f"recent_frames: must be 0 or a positive whole number of latent frames, got {recent_frames!r}")
    parsed = Rate.parse(rate)
    vae, enc = VAES[cfg.vae], encoder_config_for(model, str(parsed))
    latent_h, latent_w = height // vae.spatial_factor, width // vae.spatial_factor
    per_frame = (latent_h // cfg.patch_size[1]) * (latent_w // cfg.patch_size[2])
    history_frames = latent_frame_count(frame_count(history_seconds, fps), vae.temporal_factor)
    chunk_frames = latent_frame_count(frame_count(chunk_seconds, fps), vae.temporal_factor)
    recent = min(recent_frames, history_frames)
    history_shape = (history_frames, latent_h, latent_w)
    older_shape = (history_frames - recent, latent_h, latent_w)
    compressed = memory_token_count(enc, older_shape) if older_shape[0] else 0
    full, chunk = history_frames * per_frame, chunk_frames * per_frame
    memory = compressed + recent * per_frame  # the context: compressed memory + recent frames
    dit_params, encoder_params = dit_param_count(cfg), encoder_param_count(enc)
    weights = (dit_params + encoder_params) * dtype_bytes
    activations = activation_bytes(cfg, batch * (chunk + memory), dtype_bytes)
    vram = {"all_on_gpu": _gb(weights + activations),
            "weights_offloaded": _gb(2 * largest_layer_params(cfg, enc) * dtype_bytes + activations)}
    comfy = comfy_12gb(cfg, enc, vae, batch * (chunk + memory), history_shape) if vae.name in VAE_PARAMS else []
    video_frames, chunk_video_frames = frame_count(video_seconds, fps), round(chunk_seconds * fps)
    return {
        "model": model, "width": width, "height": height, "fps": fps, "history_seconds": history_seconds,
        "chunk_seconds": chunk_seconds, "rate": str(parsed), "dtype_bytes": dtype_bytes, "text_tokens": text_tokens,
        "batch": batch,
        "latent_height": latent_h, "latent_width": latent_w,
        "history_latent_frames": history_frames, "chunk_latent_frames": chunk_frames,
        "tokens_per_latent_frame": per_frame,
        "memory_grid": list(memory_grid(older_shape, enc.latent_stride)),
        "recent_frames": recent, "recent_tokens": recent * per_frame, "compressed_tokens": compressed,
        "memory_tokens": memory, "full_history_tokens": full, "chunk_tokens": chunk,
        "compression": round(full / memory, 3),
        "attention_flops_ratio": round((chunk + full) ** 2 / (chunk + memory) ** 2, 3),
        "dit_flops_per_step_memory": dit_flops(cfg, chunk, memory, text_tokens),
        "dit_flops_per_step_full_history": dit_flops(cfg, chunk, full, text_tokens),
        "dit_flops_per_step_no_history": dit_flops(cfg, chunk, 0, text_tokens),
        "dit_flops_per_chunk": chunk_flops_by_path(cfg, chunk, memory, text_tokens),
        "encoder_flops": encoder_flops(enc, history_shape),
        "dit_params": dit_params, "encoder_params": encoder_params,
        "weights_gb": _gb(weights), "activation_gb": _gb(activations),
        "vram_estimate_gb": vram,
        "fits_12gb": {case: gb <= GPU_BUDGET_GB for case, gb in vram.items()},
        "comfyui_12gb": comfy,
        "video_seconds": video_seconds,
        "ram_estimate_gb": _gb(ram_bytes(cfg, vae, width, height, video_frames, weights, chunk_video_frames)),
        "ram_as_image_gb": _gb(ram_bytes(cfg, vae, width, height, video_frames, weights, video_frames)),
        "notes": _notes(cfg, vae),
    }


# ---------------------------------------------------------------------------------------------- training

TRAINING_GPU_GB = 24.0


def lora_param_count(cfg: DiTConfig, rank: int) -> int:
    """pfp_core.training.lora on every Linear of the blocks, rank * (in + out) each: per block 8 attention projections
    d -> d (self- and cross-attention q, k, v, o; 2 more for i2v's image k, v) and the FFN d -> ffn -> d."""
    projections = 8 + (2 if cfg.model_type == "i2v" else 0)
    return cfg.num_layers * rank * (projections * 2 * cfg.dim + 2 * (cfg.dim + cfg.ffn_dim))


def block_saved_bytes(cfg: DiTConfig, tokens: int) -> int:
    """What autograd keeps for the backward of one DiT block over `tokens` (denoised + memory) at batch 1 under
    bf16 autocast, counted with torch.autograd.graph.saved_tensors_hooks (tests/test_planner.py recounts it):
    per token 72 bytes per unit of width (fp32 residual stream, norms and RoPE copies; bf16 q, k, v and
    projections), 4 per FFN unit (bf16 GELU input and output), 8 per head (log-sum-exp of both attentions) and
    8 * head_dim + 36 (RoPE cos/sin, norm statistics)."""
    return tokens * (72 * cfg.dim + 4 * cfg.ffn_dim + 8 * cfg.num_heads + 8 * cfg.head_dim + 36)


def encoder_saved_bytes(enc: EncoderConfig, latent_shape: tuple[int, int, int]) -> int:
    """The same for the memory encoder (proposed variant) over history latents (T, H, W): 12 bytes per latent
    voxel and HR channel + 40 at full resolution, 38 per memory cell and HR channel + 2 per output channel
    (fitted over rates 4x4x2, 2x2x2, 2x2x1 and widths 32-128; tests/test_planner.py recounts it)."""
    cells = math.prod(memory_grid(latent_shape, enc.latent_stride))
    voxels = cells * math.prod(enc.latent_stride)
    return voxels * (12 * enc.width + 40) + cells * (38 * enc.width + 2 * enc.dim)


def training_bytes(cfg: DiTConfig, enc: EncoderConfig, tokens: int, history_shape: tuple[int, int, int],
                   batch: int, lora_rank: int, checkpointing: bool) -> dict[str, int]:
    """Bytes per GPU of one training step, by kind. Trained parameters are fp32 masters with fp32 gradients and
    AdamW's two fp32 moments, and autocast keeps a bf16 copy of each; with LoRA the frozen DiT is held in bf16
    and only the adapters and the encoder train."""
    dit = dit_param_count(cfg)
    trained = encoder_param_count(enc) + (lora_param_count(cfg, lora_rank) if lora_rank else dit)
    block = batch * block_saved_bytes(cfg, tokens)
    if checkpointing:  # each block keeps its fp32 input; in backward one block's activations exist at a time
        dit_activations = batch * cfg.num_layers * tokens * cfg.dim * 4 + block
    else:
        dit_activations = cfg.num_layers * block
    encoder_activations = batch * encoder_saved_bytes(enc, history_shape)
    # checkpointed, the encoder's full-resolution activations come back only after the DiT's backward is done
    activations = (max(dit_activations, encoder_activations) if checkpointing
                   else dit_activations + encoder_activations)
    return {"weights": 2 * dit * bool(lora_rank) + 4 * trained, "gradients": 4 * trained,
            "adamw": 8 * trained, "autocast_copies": 2 * trained, "fsdp_gathered": 0, "activations": activations}


def fsdp_training_bytes(cfg: DiTConfig, enc: EncoderConfig, tokens: int, history_shape: tuple[int, int, int],
                        batch: int, checkpointing: bool, gpus: int) -> dict[str, int]:
    """A full finetune sharded over `gpus` by FSDP2 (pfp_core.training.distributed.shard, training's --fsdp): fp32 weights,
    gradients and AdamW moments divided by the GPUs; activations as without sharding (each GPU runs its own batch).
    Gathered whole at a time: the root unit (embeddings, time projection, head) for the whole step, weights and
    gradients, plus two block-or-encoder units (the one running and the one prefetched) in fp32 with one unit's
    fp32 gradients before their reduce-scatter and its bf16 autocast copies (not cached when sharded)."""
    parts = training_bytes(cfg, enc, tokens, history_shape, batch, 0, checkpointing)
    root = dit_param_count(cfg) - cfg.num_layers * block_param_count(cfg)
    unit = max(block_param_count(cfg), encoder_param_count(enc))
    sharded = {kind: ceil_div(parts[kind], gpus) for kind in ("weights", "gradients", "adamw")}
    return {**sharded, "autocast_copies": 0, "fsdp_gathered": 8 * root + (2 * 4 + 4 + 2) * unit,
            "activations": parts["activations"]}


def _training_notes(batch: int, gpus: int) -> list[str]:
    return [
        (f"per GPU, batch {batch} per GPU, bf16 autocast, AdamW; GB = 1e9 bytes; the CUDA context (~0.5-1 GB), "
         "allocator slack, the VAE and the text encoder (not loaded while training) are not counted"),
        "tokens = denoised chunk + memory; pretraining denoises only `targets` (4) latent frames, so it needs less",
        ("activations: tensors autograd keeps for backward, counted per DiT block and for the encoder on this "
         "machine (pfp_core.planner.block_saved_bytes, encoder_saved_bytes); memory-efficient attention, no L^2"),
        "grad_checkpointing: each block keeps only its input and is recomputed in backward (~1/3 more compute)",
        ("torchrun + DDP (full, lora rows) replicates everything on each GPU: N GPUs give N times the throughput, "
         "the same memory per GPU"),
        (f"fsdp x{gpus} rows (--fsdp under torchrun, full finetune only): weights, gradients and AdamW divided by "
         f"{gpus} GPUs; fsdp_gathered = the root unit plus two blocks gathered whole; activations are not sharded "
         "(tested on 2 CPU processes with gloo only)" if gpus > 1 else
         "--gpus N adds the memory per GPU of a full finetune sharded over N GPUs by FSDP (--fsdp)"),
    ]


def training_plan(model: str, width: int, height: int, fps: float, history_seconds: float, rate: str = "4x4x2",
                  chunk_seconds: float = 2.0, batch: int = 1, lora_rank: int = 32, gpus: int = 1) -> dict:
    """Memory per GPU of a finetuning step (chunk_seconds denoised after history_seconds of memory): the whole
    DiT or a LoRA of `lora_rank`, each with and without gradient checkpointing; with gpus > 1 also the whole DiT
    sharded over them (FSDP)."""
    for name, value in (("batch", batch), ("lora_rank", lora_rank), ("gpus", gpus)):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"{name}: must be a positive whole number, got {value!r}")
    shapes = plan(model, width, height, fps, history_seconds, rate, chunk_seconds)
    cfg, enc = dit_config(model), encoder_config_for(model, shapes["rate"])
    tokens = shapes["chunk_tokens"] + shapes["memory_tokens"]
    history = (shapes["history_latent_frames"], shapes["latent_height"], shapes["latent_width"])
    modes = [("full", 0), (f"lora r{lora_rank}", lora_rank)] + ([(f"fsdp x{gpus}", 0)] if gpus > 1 else [])
    rows = []
    for mode, rank in modes:
        for checkpointing in (False, True):
            parts = (fsdp_training_bytes(cfg, enc, tokens, history, batch, checkpointing, gpus) if mode.startswith("fsdp")
                     else training_bytes(cfg, enc, tokens, history, batch, rank, checkpointing))
            total = _gb(sum(parts.values()))
            rows.append({"mode": mode, "grad_checkpointing": checkpointing,
                         "trained_params": encoder_param_count(enc) + (lora_param_count(cfg, rank) if rank else
                                                                       dit_param_count(cfg)),
                         **{f"{kind}_gb": _gb(n) for kind, n in parts.items()}, "total_gb": total,
                         f"fits_{TRAINING_GPU_GB:g}gb": total <= TRAINING_GPU_GB})
    keep = ("model", "width", "height", "fps", "history_seconds", "chunk_seconds", "rate", "memory_tokens",
            "chunk_tokens")
    return {**{key: shapes[key] for key in keep}, "tokens": tokens, "batch_per_gpu": batch, "gpus": gpus,
            "rows": rows, "notes": _training_notes(batch, gpus)}


# ---------------------------------------------------------------------------------------------- output


def _format_value(value: Any) -> str:
    if isinstance(value, bool) or isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return f"{value:.3e}" if abs(value) >= 1e12 else f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_format_value(v)}" for k, v in value.items())
    if isinstance(value, list):
        return " x ".join(_format_value(v) for v in value)
    return repr(value)


def format_comfy_row(row: dict) -> str:
    phases = ", ".join(f"{name} {gb:g}" for name, gb in row["phases_gb"].items())
    verdict = "fits" if row["fits_12gb"] else "does NOT fit"
    streamed = f", streams {row['streamed_per_step_gb']:g} GB per step" if row["streamed_per_step_gb"] else ""
    return (f"  - {row['setting']}: peak {row['peak_gb']:g} GB ({row['peak_phase']}), {verdict} in 12 GB{streamed}; "
            f"GB by phase: {phases}; text encoder {row['text_encoder']}, VAE decode {row['vae_decode']}, encoder "
            f"{row['encoder_dtype']}; how: {row['how']}")


def format_training_table(plan: dict) -> str:
    """A heading line, one row per training mode, then the notes."""
    head = (f"training {plan['model']} at {plan['width']}x{plan['height']}: {plan['chunk_seconds']:g} s chunk "
            f"({plan['chunk_tokens']:,} tokens) + memory of {plan['history_seconds']:g} s ({plan['memory_tokens']:,} "
            f"tokens, rate {plan['rate']}), batch {plan['batch_per_gpu']} per GPU")
    columns = list(plan["rows"][0])
    cells = [[_format_value(row[c]) for c in columns] for row in plan["rows"]]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(text.rjust(w) for text, w in zip(row, widths)) for row in [columns, *cells]]
    return "\n".join([head, *lines, "notes:"] + [f"  - {note}" for note in plan["notes"]])


def format_plan_table(plan: dict) -> str:
    """Two aligned columns, one field a line, then the ComfyUI settings and the notes as bulleted lists."""
    rows = [(key, _format_value(value)) for key, value in plan.items() if key not in ("notes", "comfyui_12gb")]
    width = max(len(key) for key, _ in rows)
    lines = [f"{key.ljust(width)}  {value}" for key, value in rows]
    if plan.get("comfyui_12gb"):
        lines += ["comfyui_12gb (estimated peak VRAM of a chunk in ComfyUI, per setting):"]
        lines += [format_comfy_row(row) for row in plan["comfyui_12gb"]]
    return "\n".join(lines + ["notes:"] + [f"  - {note}" for note in plan.get("notes", [])])
