"""Model configurations: the Wan DiT sizes, the memory-encoder variants and the rate notation.

A rate "4x4x2" means height/4, width/4, time/2 on the DiT's token grid (after the VAE and the DiT's 1x2x2
patch): 20 s of 480x832 at 16 fps is 81 latent frames x 30 x 52 tokens = 126k tokens, /32 = ~4k memory tokens,
the paper's "~5k".
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass


TEXT_PADDINGS = ("mean", "zeros")  # how the tiny word-hash text encoder pads prompts (pfp_core.model.text)


def check_text_padding(padding: str, field: str) -> None:
    if padding not in TEXT_PADDINGS:
        raise ValueError(f"{field}: '{padding}' is unknown; use one of {', '.join(TEXT_PADDINGS)}")


@dataclass(frozen=True)
class Rate:
    """Compression factors on the DiT token grid."""

    h: int
    w: int
    t: int

    @classmethod
    def parse(cls, text: str) -> "Rate":
        parts = str(text).lower().split("x")
        if len(parts) != 3 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
            raise ValueError(f"rate: '{text}' is not HxWxT with positive whole numbers, e.g. 4x4x2")
        h, w, t = (int(p) for p in parts)
        return cls(h=h, w=w, t=t)

    def __str__(self) -> str:
        return f"{self.h}x{self.w}x{self.t}"


@dataclass(frozen=True)
class VAEConfig:
    """How a VAE maps pixels to latents: the engine only needs the factors."""

    name: str
    latent_channels: int
    spatial_factor: int
    temporal_factor: int


class JsonConfig:
    """Configs travel as JSON in checkpoint metadata."""

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str):
        raw = json.loads(text)
        raw["patch_size"] = tuple(raw["patch_size"])  # JSON has no tuples
        return cls(**raw)


@dataclass(frozen=True)
class DiTConfig(JsonConfig):
    """Wan 2.1 / 2.2 layout. Field names follow the original Wan release."""

    name: str
    dim: int
    ffn_dim: int
    num_heads: int
    num_layers: int
    in_dim: int = 16
    out_dim: int = 16
    freq_dim: int = 256
    text_dim: int = 4096
    text_len: int = 512
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    model_type: str = "t2v"  # "i2v" adds the CLIP image projection and image cross-attention
    vae: str = "wan2.1"
    fps: int = 16

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def comfy_detectable(self) -> bool:
        """ComfyUI's stock loader infers heads = dim/128, freq_dim 256 and text_dim 4096."""
        return self.dim % 128 == 0 and self.num_heads == self.dim // 128 and self.freq_dim == 256 and self.text_dim == 4096



DEFAULT_SAMPLING_STEPS = 12  # Euler steps per chunk of a pair that records none
CHANGE_STD = 0.05  # latent units: a little above the +-4 levels (+-0.03) of sensor noise by which unchanged frames differ


# The paper's Table 1 variants of the memory encoder, and "none": no compressed memory at all, which with
# recent_frames > 0 is the sliding-window baseline.
MEMORY_VARIANTS = ("proposed", "only_lr", "without_lr", "large_patchifier")
ENCODER_VARIANTS = MEMORY_VARIANTS + ("none",)


@dataclass(frozen=True)
class EncoderConfig(JsonConfig):
    """Memory encoder phi. `variant` selects the Table 1 ablations of one architecture."""

    dim: int  # output width: the DiT's inner width
    in_channels: int = 16  # VAE latent channels
    patch_size: tuple[int, int, int] = (1, 2, 2)  # the DiT's patch: rates count DiT tokens
    rate: str = "4x4x2"
    variant: str = "proposed"
    width: int = 32  # HR branch channels
    hr_blocks: int = 1  # residual 3D conv blocks at full latent resolution
    attn_layers: int = 1
    attn_heads: int = 4
    lr_downsample: int = 2  # the LR branch sees latents pooled by this factor in space
    hr_gate_init: float = 0.1  # not 0: a zero gate barely opens in short trainings
    base_model: str = "tiny"
    fps: int = 8
    recent_frames: int = 0  # the last R history latents join the context uncompressed (pfp_core.model.context)
    # the DiT reads this encoder's context as a clean stream of its own (timestep 0, attending among itself), so
    # its keys and values are computed once per chunk (pfp_core.model.dit.context_stream); False: joint attention
    clean_context: bool = False
    # each chunk's flow starts at the last recent latent plus noise of this scale, not at pure noise, so the DiT
    # learns the change from the last frame (pfp_core.model.memory.Memory.flow_start); None: pure noise, as Wan samples
    anchor_noise: float | None = None
    # latent frames per chunk the pair was finetuned to generate, the chunk length generation uses unless told
    # otherwise; None: not recorded (1 s chunks)
    chunk_frames: int | None = None
    # Euler steps per chunk the pair was finetuned to sample with, what generation uses unless told otherwise: an
    # unrolled finetune (`finetune --unroll`) trains the one-step estimate, so it records 1; None: not recorded
    # (DEFAULT_SAMPLING_STEPS)
    sampling_steps: int | None = None
    # the DiT reads the noisy chunk minus the last recent latent, so with the anchored start it denoises the
    # chunk's change from that frame, and an unchanged region needs no copy through attention
    # (pfp_core.model.memory.change_input); False: it reads the chunk itself, as Wan does
    predict_change: bool = False
    change_std: float = CHANGE_STD  # the spread of a change the velocity's skip assumes (pfp_core.model.memory.change_skip)
    # how the tiny word-hash text encoder padded the prompts the DiT was trained on (pfp_core.model.text): files
    # that do not record it were trained on zero padding
    text_padding: str = "zeros"
    # DiT tokens the view moves per frame of a pan caption: > 0 places the context and the chunk in the world the
    # camera pans over and starts a chunk from the last frame moved with the camera (pfp_core.model.camera); 0:
    # screen positions, as Wan has them
    camera_speed: float = 0.0
    # DiT tokens an object moves per frame of a leave or return caption: > 0 gives a chunk's tokens rotary pairs
    # that follow the moving object (pfp_core.model.objects); 0: none
    object_speed: float = 0.0

    def __post_init__(self) -> None:
        if self.variant not in ENCODER_VARIANTS:
            raise ValueError(f"variant: '{self.variant}' is unknown; use one of {', '.join(ENCODER_VARIANTS)}")
        Rate.parse(self.rate)
        if not isinstance(self.recent_frames, int) or self.recent_frames < 0:
            raise ValueError(f"recent_frames: must be 0 or a positive whole number of latent frames, got "
                             f"{self.recent_frames}")
        if self.variant == "none" and not self.recent_frames:
            raise ValueError("recent_frames: the 'none' variant has no memory, so it needs recent frames (> 0)")
        if self.chunk_frames is not None and (not isinstance(self.chunk_frames, int) or self.chunk_frames < 1):
            raise ValueError(f"chunk_frames: must be a positive whole number of latent frames, got {self.chunk_frames}")
        if self.sampling_steps is not None and (not isinstance(self.sampling_steps, int) or self.sampling_steps < 1):
            raise ValueError(f"sampling_steps: must be a positive whole number of steps, got {self.sampling_steps}")
        check_text_padding(self.text_padding, "text_padding")
        if not self.change_std > 0:
            raise ValueError(f"change_std: must be a positive spread of latent values, got {self.change_std}")
        if self.predict_change and self.anchor_noise is None:
            raise ValueError("predict_change: the change flows from the last recent frame; it needs anchor_noise "
                             "(chunks that start there) and recent frames")
        if not self.camera_speed >= 0:
            raise ValueError(f"camera_speed: must be 0 (screen positions) or the tokens a pan moves per frame, got "
                             f"{self.camera_speed}")
        if not self.object_speed >= 0:
            raise ValueError(f"object_speed: must be 0 (no object positions) or the tokens an object moves per frame, "
                             f"got {self.object_speed}")
        if self.anchor_noise is not None and not (self.anchor_noise > 0 and self.recent_frames):
            raise ValueError(f"anchor_noise: {self.anchor_noise} needs a positive scale and recent frames (> 0) to "
                             "start from; leave it unset for pure noise")

    @property
    def compresses(self) -> bool:
        """False for the sliding-window baseline, whose context is recent frames only."""
        return self.variant != "none"

    @property
    def parsed_rate(self) -> Rate:
        return Rate.parse(self.rate)

    @property
    def latent_stride(self) -> tuple[int, int, int]:
        """(t, h, w) stride in latent cells from history latents to memory tokens."""
        r = self.parsed_rate
        return (r.t * self.patch_size[0], r.h * self.patch_size[1], r.w * self.patch_size[2])

    def steps_warning(self, steps: int) -> str:
        """'' when a run samples with the steps the pair was finetuned for (or none are recorded), else one line
        that says so: a pair finetuned for one step gives blurred, fading chunks at more steps."""
        if self.sampling_steps is None or steps == self.sampling_steps:
            return ""
        plural = "s" * (self.sampling_steps > 1)
        return (f"warning: steps {steps}: this encoder was finetuned with its DiT for {self.sampling_steps} sampling "
                f"step{plural} a chunk, so other steps give worse chunks; set steps to {self.sampling_steps}")


VAES = {
    "wan2.1": VAEConfig("wan2.1", latent_channels=16, spatial_factor=8, temporal_factor=4),
    "wan2.2": VAEConfig("wan2.2", latent_channels=48, spatial_factor=16, temporal_factor=4),
    "space_to_depth": VAEConfig("space_to_depth", latent_channels=16, spatial_factor=2, temporal_factor=1),
}

# `tiny` meets ComfyUI's detection rule (dim multiple of 128, heads = dim/128, freq 256, text 4096), so the
# same file loads with ComfyUI's stock UNET loader.
DIT_CONFIGS = {
    "tiny": DiTConfig("tiny", dim=128, ffn_dim=256, num_heads=1, num_layers=4, text_len=32, vae="space_to_depth", fps=8),
    "wan2.1-1.3b": DiTConfig("wan2.1-1.3b", dim=1536, ffn_dim=8960, num_heads=12, num_layers=30),
    "wan2.1-14b": DiTConfig("wan2.1-14b", dim=5120, ffn_dim=13824, num_heads=40, num_layers=40),
    "wan2.2-5b": DiTConfig("wan2.2-5b", dim=3072, ffn_dim=14336, num_heads=24, num_layers=30, in_dim=48, out_dim=48,
                           vae="wan2.2", fps=24),
}

# Encoder widths for the real sizes: the HR branch is a small fraction of the DiT (the paper calls it lightweight).
ENCODER_WIDTHS = {"tiny": 32, "wan2.1-1.3b": 256, "wan2.1-14b": 384, "wan2.2-5b": 320}


def dit_config(name: str) -> DiTConfig:
    if name not in DIT_CONFIGS:
        raise ValueError(f"model: '{name}' is unknown; use one of {', '.join(DIT_CONFIGS)}")
    return DIT_CONFIGS[name]


def known_dit_config(cfg: DiTConfig) -> DiTConfig | None:
    """The named config with the same layers and widths as `cfg` (a file without our metadata), if any."""
    shape = lambda c: (c.dim, c.ffn_dim, c.num_heads, c.num_layers, c.in_dim, c.out_dim, c.text_dim, c.model_type)
    return next((known for known in DIT_CONFIGS.values() if shape(known) == shape(cfg)), None)


def encoder_config_for(model: str, rate: str = "4x4x2", variant: str = "proposed",
                       recent_frames: int = 0, clean_context: bool = False,
                       anchor_noise: float | None = None, predict_change: bool = False) -> EncoderConfig:
    dit = dit_config(model)
    return EncoderConfig(dim=dit.dim, in_channels=dit.in_dim, patch_size=dit.patch_size, rate=rate, variant=variant,
                         width=ENCODER_WIDTHS[model], attn_heads=max(1, ENCODER_WIDTHS[model] // 32),
                         base_model=model, fps=dit.fps, recent_frames=recent_frames, clean_context=clean_context,
                         anchor_noise=anchor_noise, predict_change=predict_change)
