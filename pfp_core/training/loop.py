"""Training: stage 1 retrieves random past frames through memory (frame preservation), stage 2 generates the
next chunk from memory. Same rectified-flow loss; only what is noised and where it sits in time differ.

Batches are procedural videos (the captioned story world by default, pfp_core/training/storyworld.py, or Table 1's
fine-texture world), or clips of the user's videos (`data`, pfp_core/training/video_dataset.py), chosen by
(seed, step, rank), so a resumed run sees exactly the batches it would have seen and continues the same loss
curve, and each torchrun process trains on its own batch. The text context is the zero (empty-prompt) context,
or the caption of each clip looked up in precomputed embeddings (`text_embeddings`, pfp_core/training/text_embeddings.py);
story-world captions go through the built-in hash text encoder.

Next-chunk training sees the context generation sees (pfp_core.model.context): the last `recent_frames` history latents
uncompressed plus the memory of the older ones. Drift defence: `context_noise` corrupts that history with noise
of a random level per clip (0 to context_noise), so the model learns to continue imperfect, self-made history;
`rollout_mix` continues, in that share of steps, a history whose last frames the model generated itself; `unroll`
predicts several chunks in a row, one sampling step each, from the model's own predictions, with the gradient
through the chain. With
`anchor_noise` a chunk's flow starts at the last history latent plus scaled noise (Memory.flow_start).

Scaling up: bf16 autocast on the training device over fp32 master weights, gradient checkpointing of the DiT
blocks and the encoder's full-resolution convolutions, LoRA on a frozen DiT loaded from a Wan file
(pfp_core.training.lora), several processes through DistributedDataParallel, or with `fsdp` the whole model sharded over
them by FSDP2 (pfp_core.training.distributed.shard) for full finetunes larger than one GPU; either way one checkpoint file.
"""
from __future__ import annotations

import contextlib
import json
import math
import random
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import distributed, procedural, storyworld
from .. import limits
from ..atomic import save_tensors, write_bytes
from ..model.checkpoint import CheckpointError, load_dit, load_encoder, read_dit_config, read_safetensors, save_model
from ..generation.chunk_store import FolderLock
from ..config import DIT_CONFIGS, DiTConfig, check_text_padding, dit_config, encoder_config_for
from .distributed import Process
from ..model.dit import WanDiT
from ..model.encoder import MemoryEncoder
from .export import folder_files, merged_dit
from ..model.flow import add_noise, flow_loss, sample, sampling_sigmas, training_sigmas
from .lora import LoRA, attach, freeze_base, load_lora_into, lora_for, merge_into, read_lora, save_lora
from ..model.context import build_context
from ..model.memory import Memory, caption_paths, change_loss_weight, empty_memory, with_recent
from .precision import bf16_is_faster
from ..model.text import HashTextEncoder
from .text_embeddings import FrameCaptions, TextEmbeddings, load_text_embeddings
from ..model.vae import SpaceToDepthVAE
from .video_dataset import VideoClips, VideoFolder, report

STAGES = ("pretrain", "finetune")
WORLDS = ("story", "texture")  # procedural data: the captioned story world, or Table 1's fine-texture world


@dataclass
class TrainSettings:
    stage: str
    out: Path
    steps: int = 1000
    batch: int = 4
    history_frames: tuple[int, ...] = (32, 48, 64, 96)  # one length per step, drawn from these
    targets: int = 4  # pretrain: frames retrieved per encoded history (encoding is the expensive part)
    chunk_frames: int = 8  # finetune: frames generated after the history
    retrieval_mix: float = 0.25  # finetune: share of steps that keep practising retrieval, so memory stays sharp
    rollout_mix: float = 0.0  # finetune: share of next-chunk steps whose history ends in the model's own frames
    unroll: int = 0  # finetune: next-chunk steps predict this many chunks in a row from their own predictions
    unroll_mix: float = 1.0  # with unroll: share of next-chunk steps unrolled; the others denoise one chunk
    lr: float = 1e-3
    warmup: int = 50
    shift: float = 1.0
    seed: int = 0
    use_memory: bool = True  # False trains the no-memory baseline
    context_window: int = 0  # with use_memory False: the last N history latents, uncompressed (sliding-window baseline)
    bf16: bool | None = None  # None: bf16 autocast where it is measured faster than fp32 on this machine
    checkpoint_every: int = 100
    model: str = "tiny"
    rate: str = "4x4x2"
    variant: str = "proposed"
    size: int = 32
    init_from: Path | None = None  # finetune starts from a pretrain output folder
    dit_init: Path | None = None  # start from this Wan DiT file (original or ComfyUI layout); sets `model`
    lora_rank: int = 0  # > 0: train a LoRA of this rank on the frozen DiT (the encoder is trained whole)
    lora_alpha: float | None = None  # LoRA scale = alpha / rank; None: alpha = rank
    grad_checkpointing: bool = False
    device: str = "auto"  # auto: this process's GPU when torch sees one, else the CPU
    data: Path | None = None  # folder of the user's videos; None: procedural videos
    text_embeddings: Path | None = None  # precomputed caption embeddings; None: zero context
    text_padding: str = "mean"  # story world: how the word-hash encoder pads captions (pfp_core.model.text)
    world: str = "texture"  # procedural data without --data: "story" (captioned) or "texture" (Table 1)
    scenes: tuple[str, ...] = storyworld.SCENES  # story world: each clip's scene drawn from these, repeats weigh
    recent_frames: int = 0  # history latents given uncompressed beside the memory (pfp_core.model.context)
    context_noise: float = 0.0  # finetune: history plus noise of standard deviation U(0, context_noise)
    clean_context: bool = False  # the DiT reads the context as a clean stream of its own (pfp_core.model.dit.context_stream)
    anchor_noise: float | None = None  # finetune: chunks flow from the last recent latent plus this much noise
    predict_change: bool = False  # finetune: the DiT reads the chunk's change from the last history latent
    camera_speed: float = 0.0  # tokens a pan caption moves the view per frame: context placed in the world (model.camera)
    object_speed: float = 0.0  # tokens a leave or return caption moves an object per frame (model.objects)
    change_weighting: bool = False  # with predict_change: EDM's loss weight by noise level (change_loss_weight)
    fsdp: bool = False  # shard weights, gradients and AdamW state over the torchrun processes (FSDP2) instead of DDP
    distill_from: Path | None = None  # with unroll: a pair's one-step estimates are the chunks' targets (Teacher)

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage: '{self.stage}' is unknown; use pretrain or finetune")
        if self.dit_init is not None and self.init_from is not None:
            raise ValueError("dit-init: --init-from already gives the DiT; pass only one of them")
        if self.lora_rank < 0:
            raise ValueError(f"lora-rank: must be 0 (off) or a positive whole number, got {self.lora_rank}")
        if self.lora_alpha is not None and not self.lora_rank:
            raise ValueError("lora-alpha: only scales a LoRA; pass --lora-rank too")
        if self.fsdp and self.lora_rank:
            raise ValueError("fsdp: shards a full finetune; a LoRA run is not sharded (its frozen DiT fits one GPU "
                             "in bf16): drop --fsdp (torchrun then uses DDP) or drop --lora-rank")
        if self.fsdp and self.clean_context:
            raise ValueError("fsdp: the clean context stream reads block weights outside the blocks' own calls, "
                             "where FSDP keeps them sharded; drop --clean-context or --fsdp")
        if self.fsdp and distributed.launched_world() == 1:
            raise ValueError("fsdp: shards the model over torchrun's processes, but this is one process; launch with "
                             "`python -m torch.distributed.run --nproc-per-node N -m pfp_core ...` or drop --fsdp")
        base, _ = start_files(self)
        if base is None and self.lora_rank:
            raise ValueError("lora-rank: a LoRA adapts a base DiT from a file; pass --dit-init PATH (a Wan "
                             "diffusion model) or --init-from a training folder")
        if base is not None:
            self.model = trainable_size(read_dit_config(base, self.start_field), self.start_field)
        check_text_padding(self.text_padding, "text-padding")
        if self.world not in WORLDS:
            raise ValueError(f"world: '{self.world}' is unknown; use one of {', '.join(WORLDS)}")
        if not self.scenes or not set(self.scenes) <= set(storyworld.SCENES):
            raise ValueError(f"scenes: '{' '.join(self.scenes)}' is not a choice of the story world's scenes; pass "
                             f"some of {', '.join(storyworld.SCENES)}")
        if tuple(self.scenes) != storyworld.SCENES and (self.world != "story" or self.data is not None):
            raise ValueError("scenes: only the procedural story world has scenes; pass --world story without --data, "
                             "or drop --scenes")
        if not 0.0 <= self.context_noise < 1.0:
            raise ValueError(f"context-noise: must be in [0, 1), got {self.context_noise}")
        if not 0.0 <= self.rollout_mix <= 1.0 or (self.rollout_mix and self.stage != "finetune"):
            raise ValueError(f"rollout-mix: a share of finetune steps, from 0 to 1; got {self.rollout_mix} with stage "
                             f"{self.stage}")
        if self.unroll < 0 or (self.unroll and (self.stage != "finetune" or self.rollout_mix)):
            raise ValueError(f"unroll: chunks a finetune step predicts in a row, 0 (off) or more, and not with "
                             f"--rollout-mix (which recycles history without gradient); got {self.unroll} with stage "
                             f"{self.stage}, rollout-mix {self.rollout_mix}")
        if not 0.0 < self.unroll_mix <= 1.0 or (self.unroll_mix < 1.0 and not self.unroll):
            raise ValueError(f"unroll-mix: a share of next-chunk steps above 0 and at most 1, with --unroll; got "
                             f"{self.unroll_mix} with unroll {self.unroll}")
        if self.anchor_noise is not None and (self.stage != "finetune" or not self.use_memory or not self.recent_frames):
            raise ValueError("anchor-noise: chunks start from the last recent frame in a finetune with an encoder; "
                             "pass --recent-frames R with stage finetune, or drop --anchor-noise")
        if self.predict_change and (self.stage != "finetune" or not self.use_memory or self.anchor_noise is None):
            raise ValueError("predict-change: the change flows from the last recent frame in a finetune with an "
                             "encoder; pass --recent-frames R --anchor-noise A with stage finetune, or drop "
                             "--predict-change")
        for name, speed in (("camera-speed", self.camera_speed), ("object-speed", self.object_speed)):
            if speed and (not self.use_memory or self.world != "story" or self.data is not None):
                raise ValueError(f"{name}: the path is read from the story world's captions, through a memory "
                                 f"encoder; pass --world story without --data or --no-memory, or drop --{name}")
        if self.change_weighting and not self.predict_change:
            raise ValueError("change-weighting: weighs the errors of a change-reading DiT; pass --predict-change too, "
                             "or drop --change-weighting")
        if self.change_weighting and self.batch < 2:
            raise ValueError("change-weighting: weighs a batch's samples against each other, which a batch of 1 "
                             "cannot; use --batch 2 or more, or drop --change-weighting")
        if self.distill_from is not None and (not self.unroll or not self.use_memory or self.fsdp):
            raise ValueError("distill-from: a pair's one-step estimates replace the real chunks of unrolled steps with "
                             "memory, in one process or under DDP; pass --unroll K without --no-memory or --fsdp, or "
                             "drop --distill-from")
        if self.context_window and (self.use_memory or self.stage != "finetune" or self.retrieval_mix):
            raise ValueError("context-window: the sliding-window baseline is a finetune without memory or retrieval; "
                             "use it with --no-memory --retrieval-mix 0")

    @property
    def start_field(self) -> str:
        return "init-from" if self.init_from is not None else "dit-init"

    @property
    def alpha(self) -> float:
        return self.lora_alpha if self.lora_alpha is not None else float(self.lora_rank)


def start_files(settings: TrainSettings) -> tuple[Path | None, Path | None]:
    """(base DiT file, LoRA to continue) the run starts from; no base file means a randomly initialised DiT."""
    if settings.init_from is not None:
        return folder_files(Path(settings.init_from), "init-from")
    return (Path(settings.dit_init) if settings.dit_init is not None else None), None


def trainable_size(config: DiTConfig, field: str) -> str:
    """The named size of a DiT file: the encoder's width and the clip fps come with it."""
    if config.name not in DIT_CONFIGS:
        raise ValueError(f"{field}: a DiT of width {config.dim}, {config.num_layers} layers, {config.in_dim} input "
                         f"channels ({config.model_type}) is not a size training knows; use one of "
                         f"{', '.join(DIT_CONFIGS)} (text-to-video layouts)")
    return config.name


class Teacher(torch.nn.Module):
    """A frozen pair whose one-step estimates an unrolled finetune regresses instead of the real chunks, as CausVid
    starts its causal student on its bidirectional teacher's outputs: a deterministic target teaches another
    attention pattern (a joint-pattern teacher, a --clean-context student) in fewer steps than the data's
    conditional mean did (docs/results/clean_context.md). It reads the student's own chain of chunks through its
    own encoder and pattern."""

    def __init__(self, folder: Path):
        super().__init__()
        if not (folder / "encoder.safetensors").is_file():
            raise ValueError(f"distill-from: {folder} holds no encoder.safetensors; pass the training folder of a pair "
                             "with memory (dit.safetensors and encoder.safetensors)")
        self.dit = merged_dit(folder, "distill-from")
        self.encoder = load_encoder(folder / "encoder.safetensors")
        self.requires_grad_(False)

    def check_student(self, dit: WanDiT, encoder: MemoryEncoder, folder: Path) -> None:
        """The teacher must read what the student is given: the same latents, chunk start and caption padding."""
        reads = lambda dit, encoder: (dit.config.in_dim, dit.config.patch_size, dit.config.text_dim,
                                      encoder.config.anchor_noise, encoder.config.predict_change,
                                      encoder.config.text_padding)
        if reads(self.dit, self.encoder) != reads(dit, encoder):
            raise ValueError(f"distill-from: {folder} reads chunks otherwise than this student (latent channels, "
                             "patch, text width, --anchor-noise, --predict-change, --text-padding); pass a pair "
                             "trained with the student's flags")

    @torch.no_grad()
    def estimate(self, start: torch.Tensor, text: torch.Tensor, history: torch.Tensor, frame_times: torch.Tensor,
                 settings: TrainSettings) -> torch.Tensor:
        """The teacher's one Euler step from full noise at `start`, given `history`: its x0 estimate of the chunk."""
        full_noise = torch.full((start.shape[0],), 1000.0, device=start.device)
        return start - self.dit(start, full_noise, text, encode_memory(self, history, settings), frame_times)


class Models(torch.nn.Module):
    """What a training step runs: the DiT, the memory encoder (None: the no-memory baseline), the LoRA adapters
    (None: the whole DiT trains) and a frozen teacher to distil (None: the data is the target). One module, so
    DistributedDataParallel can wrap it."""

    def __init__(self, dit: WanDiT, encoder: MemoryEncoder | None, lora: LoRA | None = None,
                 teacher: Teacher | None = None):
        super().__init__()
        self.dit, self.encoder, self.lora, self.teacher = dit, encoder, lora, teacher
        if lora is not None:
            attach(lora, dit)

    def forward(self, latents: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                retrieval: bool, text: FrameCaptions | None = None, rollout: bool = False,
                unrolled: bool = False) -> torch.Tensor:
        if retrieval:
            return retrieval_loss(self, latents, settings, gen, text)
        if unrolled:
            return unrolled_loss(self, latents, settings, gen, text)
        return next_chunk_loss(self, latents, settings, gen, text, rollout)

    def trainable(self) -> list[torch.nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]


def set_grad_checkpointing(models: Models, on: bool) -> None:
    models.dit.grad_checkpointing = on
    if models.encoder is not None and hasattr(models.encoder, "hr"):
        models.encoder.hr.grad_checkpointing = on


def build_lora(settings: TrainSettings, dit: WanDiT, saved: Path | None) -> LoRA | None:
    """A new adapter, or the one of the --init-from folder continued. That folder's adapter is merged into the
    base instead when this run trains the whole DiT (no --lora-rank)."""
    if not settings.lora_rank:
        if saved is not None:
            merge_into(dit, read_lora(saved, "init-from")[0])
        return None
    freeze_base(dit, settings.bf16)
    lora = lora_for(dit, settings.lora_rank, settings.alpha)
    if saved is not None:
        load_lora_into(lora, saved, "init-from")
    return lora


def build_models(settings: TrainSettings) -> Models:
    torch.manual_seed(settings.seed)
    base, saved_lora = start_files(settings)
    dit = load_dit(base, settings.start_field) if base is not None else WanDiT(dit_config(settings.model))
    encoder = None
    if settings.use_memory and settings.init_from is not None and settings.variant != "none":
        encoder = load_encoder(Path(settings.init_from) / "encoder.safetensors")
        encoder.config = replace(encoder.config, recent_frames=settings.recent_frames,
                                 clean_context=settings.clean_context, anchor_noise=settings.anchor_noise,
                                 predict_change=settings.predict_change)
    elif settings.use_memory:
        encoder = MemoryEncoder(encoder_config_for(settings.model, settings.rate, settings.variant,
                                                   settings.recent_frames, settings.clean_context,
                                                   settings.anchor_noise, settings.predict_change))
    if encoder is not None and settings.stage == "finetune":  # generation's default chunk length and steps
        encoder.config = replace(encoder.config, chunk_frames=settings.chunk_frames,
                                 sampling_steps=1 if settings.unroll else None)
    if encoder is not None:  # generation pads prompts and places context as training did
        encoder.config = replace(encoder.config, text_padding=recorded_text_padding(settings),
                                 camera_speed=settings.camera_speed, object_speed=settings.object_speed)
    if settings.predict_change and not predicted_change_before(settings):
        if settings.lora_rank:  # the zero head would stay zero and pass no gradient to the adapter or the encoder
            raise ValueError("predict-change: a DiT that starts reading changes starts from a zero head, which a LoRA "
                             "run cannot train (its base is frozen); run that finetune without --lora-rank first and "
                             "pass its folder as --init-from, or drop --predict-change")
        # the head knew velocities of whole chunks, not of changes: start from Wan's zero head
        torch.nn.init.zeros_(dit.head.head.weight)
        torch.nn.init.zeros_(dit.head.head.bias)
    teacher = Teacher(Path(settings.distill_from)) if settings.distill_from is not None else None
    if teacher is not None:
        teacher.check_student(dit, encoder, Path(settings.distill_from))
    models = Models(dit, encoder, build_lora(settings, dit, saved_lora), teacher)
    set_grad_checkpointing(models, settings.grad_checkpointing)
    return models.train()


def recorded_text_padding(settings: TrainSettings) -> str:
    """Precomputed embeddings pad with zeros, as Wan pads T5 output; the word-hash encoder as the settings say."""
    return "zeros" if settings.text_embeddings is not None else settings.text_padding


def predicted_change_before(settings: TrainSettings) -> bool:
    """Whether the pair in --init-from already predicts changes (its DiT's head then means one)."""
    saved = None if settings.init_from is None else Path(settings.init_from) / "encoder.safetensors"
    return saved is not None and saved.exists() and load_encoder(saved).config.predict_change


def step_rng(settings: TrainSettings, step: int, rank: int = 0) -> random.Random:
    """Rank 0 draws what a single-process run draws; other ranks draw their own batches."""
    return random.Random(settings.seed * 1_000_003 + step + rank * 2**48)


@dataclass
class TrainingData:
    videos: VideoFolder | None  # None: procedural videos
    texts: TextEmbeddings | HashTextEncoder | None  # None: the zero context


def load_training_data(settings: TrainSettings, progress: bool = False) -> TrainingData:
    """Scan the video folder and load the embeddings once; every caption must have an embedding."""
    videos = texts = None
    if settings.data is not None:
        shortest = min(settings.history_frames)
        longest = max(settings.history_frames) + (settings.chunk_frames if settings.stage == "finetune" else 0)
        fps = dit_config(settings.model).fps
        videos = VideoFolder(settings.data, fps, settings.size, settings.size, shortest, progress)
        videos.check_fits(longest)
    captions = videos.captions() if videos else set()
    if settings.text_embeddings is not None:
        texts = load_text_embeddings(settings.text_embeddings)
        texts.check_covers(captions)
    elif settings.data is None and settings.world == "story":
        texts = HashTextEncoder(dit_config(settings.model).text_dim, padding=settings.text_padding)
    elif captions:
        report("warning: --data has caption files but no --text-embeddings was given: training without text "
               "(build the file with `python -m pfp_core embed-texts`)")
    return TrainingData(videos, texts)


def batch_videos(settings: TrainSettings, data: TrainingData, rng: random.Random, frames: int) -> VideoClips:
    if data.videos is not None:
        return data.videos.clips(rng, settings.batch, frames)
    if settings.world == "story":
        return story_clips(settings, rng, frames)
    seeds = [rng.randrange(len(procedural.TRAIN_SEEDS)) for _ in range(settings.batch)]
    pixels = procedural.video_batch(seeds, frames, settings.size, dit_config(settings.model).fps)
    return VideoClips(pixels, [[""] * frames for _ in seeds])


def story_clips(settings: TrainSettings, rng: random.Random, frames: int) -> VideoClips:
    """Story-world clips, each of a scene drawn uniformly from the settings' scenes (a scene named twice comes twice
    as often), each the first `frames` frames of an 8 s video, so clip and storyboard segments start together and a
    chunk of one second is one segment."""
    fps = dit_config(settings.model).fps
    seconds = -(-frames // fps)
    videos = [storyworld.make_story_video(rng.randrange(len(procedural.TRAIN_SEEDS)), max(8, seconds),
                                          rng.choice(settings.scenes), settings.size, fps) for _ in range(settings.batch)]
    pixels = procedural.to_pixels(np.stack([video.frames[:frames] for video in videos]))
    return VideoClips(pixels, [video.captions()[:frames] for video in videos])


@dataclass
class ClipPaths:
    """[B, T] each, from the clips' captions: the view's position (pfp_core.model.camera) and a moving object's
    shift (pfp_core.model.objects); None where the pair reads neither."""
    camera: torch.Tensor | None = None
    objects: torch.Tensor | None = None


def clip_paths(models: Models, text: FrameCaptions | None) -> ClipPaths:
    config = models.encoder.config if models.encoder is not None else None
    if config is None or text is None:
        return ClipPaths()
    rows = [caption_paths(row, config.camera_speed, config.object_speed) for row in text.captions]
    return ClipPaths(*(None if paths[0] is None else torch.stack(paths) for paths in zip(*rows)))


def placed(memory: Memory | None, paths: ClipPaths, frames: int, chunk: bool = True) -> Memory | None:
    """`memory` with the paths of the clips' first `frames` frames (window and chunk), as generation gives them;
    the object shift only for a chunk that continues the window (retrieval redraws past frames where they were)."""
    if memory is None:
        return memory
    cut = lambda path: None if path is None else path[:, :frames].to(memory.tokens.device)
    return replace(memory, camera=cut(paths.camera), object_path=cut(paths.objects) if chunk else None)


def encode_memory(models: Models, history_latents: torch.Tensor, settings: TrainSettings,
                  paths: ClipPaths = ClipPaths()) -> Memory | None:
    """The context a chunk after this history gets at generation (pfp_core.model.context)."""
    fps = dit_config(settings.model).fps
    if models.encoder is not None:
        encoder = models.encoder
        memory_of = (lambda older: encoder.encode(older, fps)) if encoder.config.compresses else None
        memory = build_context(encoder.config, memory_of, history_latents, fps)
        return placed(memory, paths, history_latents.shape[2] + settings.chunk_frames)
    if settings.context_window:
        memory = empty_memory(history_latents.shape[0], models.dit.config.dim)
        return with_recent(memory, history_latents, settings.context_window, models.dit.config.patch_size)
    return None


def corrupt(history_latents: torch.Tensor, max_level: float, gen: torch.Generator) -> torch.Tensor:
    """History plus Gaussian noise of a random standard deviation in [0, max_level) per clip: practice for
    continuing imperfect history. Added, not mixed in as the flow mixes noise: a mix would also dim the history
    by (1 - level), and a model trained to undo that dimming brightens clean history, chunk after chunk."""
    if not max_level:
        return history_latents
    level = torch.rand(history_latents.shape[0], generator=gen).to(history_latents.device) * max_level
    noise = torch.randn(history_latents.shape, generator=gen).to(history_latents.device)
    return history_latents + level.view(-1, *([1] * (history_latents.dim() - 1))) * noise


def retrieval_loss(models: Models, latents: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                   text: FrameCaptions | None = None) -> torch.Tensor:
    """Stage 1: noise `targets` random frames of the history and denoise them at their own time positions, from
    the compressed memory of the whole history alone (recent frames would give some targets away)."""
    b, _, t = latents.shape[:3]
    encoder = models.encoder
    memory = encoder.encode(latents, dit_config(settings.model).fps) if encoder and encoder.config.compresses else None
    memory = placed(memory, clip_paths(models, text), t, chunk=False)
    frame_times = torch.stack([torch.randperm(t, generator=gen)[: settings.targets] for _ in range(b)])
    index = frame_times[:, None, :, None, None].expand(-1, latents.shape[1], -1, *latents.shape[3:]).to(latents.device)
    x0 = latents.gather(2, index)
    return denoising_loss(models, x0, memory, frame_times, settings, gen, text)


def next_chunk_loss(models: Models, latents: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                    text: FrameCaptions | None = None, rollout: bool = False) -> torch.Tensor:
    """Stage 2: the last chunk of the clip is generated from the memory of everything before it (with `rollout`,
    a history whose own last chunk the model generated)."""
    split = latents.shape[2] - settings.chunk_frames
    history = latents[:, :, :split]
    if rollout and split > rollout_chunks(settings) * settings.chunk_frames:
        history = recycled_history(models, history, settings, gen, text)
    memory = encode_memory(models, corrupt(history, settings.context_noise, gen), settings, clip_paths(models, text))
    frame_times = torch.arange(split, latents.shape[2]).expand(latents.shape[0], -1)
    return denoising_loss(models, latents[:, :, split:], memory, frame_times, settings, gen, text)


def unrolled_loss(models: Models, latents: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                  text: FrameCaptions | None = None) -> torch.Tensor:
    """Stage 2 as generation runs it with one sampling step: the last `unroll` chunks of the clip are predicted
    one after the other, each from the memory of the real history plus the chunks predicted before it, as the
    flow's estimate of x0 from full noise (one Euler step from s = 1: the conditional mean, the prediction with
    the least squared error). The loss is each chunk's flow error at s = 1, which is its squared error against
    the real chunk, and its gradient runs through the whole chain: the model learns to continue its own output,
    as autoregressive forecasters are finetuned on multi-step rollouts. With a teacher (--distill-from), each
    chunk's target is the teacher's one-step estimate given the same chain, not the real chunk."""
    split = latents.shape[2] - settings.unroll * settings.chunk_frames
    history = corrupt(latents[:, :, :split], settings.context_noise, gen)
    vae, paths = SpaceToDepthVAE(), clip_paths(models, text)
    losses = []
    for start in range(split, latents.shape[2], settings.chunk_frames):
        end = start + settings.chunk_frames
        memory = encode_memory(models, history, settings, paths)
        frame_times = torch.arange(start, end).expand(latents.shape[0], -1)
        noise = chunk_noise(latents[:, :, start:end].shape, memory, gen, latents.device)
        full_noise = torch.full((latents.shape[0],), 1000.0, device=latents.device)
        context = text_context(models, text, frame_times, latents.device)
        velocity = models.dit(noise, full_noise, context, memory, frame_times)
        target = latents[:, :, start:end] if models.teacher is None else models.teacher.estimate(
            noise, context, history, frame_times, settings)
        losses.append(flow_loss(velocity, target, noise))
        # appended as generation appends it: in the VAE's range, padding channels zero (rounding has no gradient)
        history = torch.cat((history, vae.encode(vae.decode(noise - velocity))), dim=2)
    return torch.stack(losses).mean()


ROLLOUT_STEPS = 4  # Euler steps of a recycled chunk: the kind of errors generation makes, at a third of its cost
ROLLOUT_FRAMES = 4  # history frames a rollout regenerates, a chunk at a time: short chunks compound their errors


def rollout_chunks(settings: TrainSettings) -> int:
    return -(-ROLLOUT_FRAMES // settings.chunk_frames)


def recycled_history(models: Models, history: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                     text: FrameCaptions | None) -> torch.Tensor:
    """`history` with its last chunks (ROLLOUT_FRAMES or more) replaced, one after the other, by the model's own
    continuation of what precedes each: the next chunk then learns to continue self-made history, the drift
    defence of Self-Forcing and SVI (no gradient through the rollout)."""
    first = history.shape[2] - rollout_chunks(settings) * settings.chunk_frames
    for start in range(first, history.shape[2], settings.chunk_frames):
        history = with_own_chunk(models, history, start, settings, gen, text)
    return history


def with_own_chunk(models: Models, history: torch.Tensor, start: int, settings: TrainSettings,
                   gen: torch.Generator, text: FrameCaptions | None) -> torch.Tensor:
    """The chunk at `start` replaced by a sample from its flow start given the frames before it, rounded to 8-bit
    frames as generation appends a chunk."""
    end = start + settings.chunk_frames
    frame_times = torch.arange(start, end).expand(history.shape[0], -1)
    with torch.no_grad():
        memory = encode_memory(models, history[:, :, :start], settings, clip_paths(models, text))
        context = text_context(models, text, frame_times, history.device)
        noise = chunk_noise(history[:, :, start:end].shape, memory, gen, history.device)
        velocity = lambda x, sigma: models.dit(x, sigma * 1000, context, memory, frame_times)
        chunk = sample(velocity, noise, sampling_sigmas(ROLLOUT_STEPS, settings.shift))
        vae = SpaceToDepthVAE()
        rounded = ((vae.decode(chunk) + 1) * 127.5).round() / 127.5 - 1
        return torch.cat((history[:, :, :start], vae.encode(rounded), history[:, :, end:]), dim=2)


def chunk_noise(shape: torch.Size, memory: Memory | None, gen: torch.Generator, device: torch.device) -> torch.Tensor:
    """Where a chunk's flow starts (Memory.flow_start; retrieval and the no-memory baseline: pure noise), drawn on
    the CPU generator whatever the device, so a GPU run draws the same noise as a CPU run."""
    noise = torch.randn(shape, generator=gen).to(device)
    return memory.flow_start(noise) if memory is not None else noise


def text_context(models: Models, text: FrameCaptions | None, frame_times: torch.Tensor,
                 device: torch.device) -> torch.Tensor:
    """The captions of the frames being denoised; no embeddings: the empty prompt as a zero context."""
    if text is not None:
        return text.context(frame_times).to(device)
    return torch.zeros(frame_times.shape[0], 1, models.dit.config.text_dim, device=device)


def denoising_loss(models: Models, x0: torch.Tensor, memory: Memory | None, frame_times: torch.Tensor,
                   settings: TrainSettings, gen: torch.Generator, text: FrameCaptions | None = None) -> torch.Tensor:
    noise = chunk_noise(x0.shape, memory, gen, x0.device)
    sigma = training_sigmas(x0.shape[0], settings.shift, gen).to(x0.device)
    context = text_context(models, text, frame_times, x0.device)
    velocity = models.dit(add_noise(x0, noise, sigma), sigma * 1000, context, memory, frame_times)
    weights = change_loss_weight(sigma * 1000, memory) if settings.change_weighting else None
    return flow_loss(velocity, x0, noise, weights)


def train_step(trainer: torch.nn.Module, optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int,
               rank: int = 0, data: TrainingData | None = None) -> float:
    """One optimisation step on this rank's batch; `trainer` is Models, or Models wrapped in DDP. `data` from
    load_training_data; loaded here when not given (a folder scan: pass it in loops)."""
    data = data if data is not None else load_training_data(settings)
    loss = step_loss(trainer, settings, step, rank, data, bool(settings.bf16))
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(trainer.parameters(), 1.0)
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * min(1.0, (step + 1) / settings.warmup)
    optimizer.step()
    return loss.item()


def step_loss(trainer: torch.nn.Module, settings: TrainSettings, step: int, rank: int, data: TrainingData,
              bf16: bool) -> torch.Tensor:
    """The loss of this rank's batch for `step`: what the step draws depends only on (seed, step, rank)."""
    device = next(trainer.parameters()).device
    rng = step_rng(settings, step, rank)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    history = rng.choice(settings.history_frames)
    retrieval = settings.stage == "pretrain" or rng.random() < settings.retrieval_mix
    rollout = not retrieval and settings.rollout_mix > 0 and rng.random() < settings.rollout_mix
    # drawn only for a mixed stage, so an all-unrolled stage draws the batches it drew before the mix existed
    unrolled = not retrieval and settings.unroll > 0 and (
        settings.unroll_mix == 1.0 or rng.random() < settings.unroll_mix)
    frames = history + (0 if retrieval else settings.chunk_frames * (settings.unroll if unrolled else 1))
    clips = batch_videos(settings, data, rng, frames)
    latents = SpaceToDepthVAE().encode(clips.pixels).to(device)
    text_len = getattr(trainer, "module", trainer).dit.config.text_len  # DDP keeps the model as .module
    text = FrameCaptions(clips.captions, data.texts, text_len) if data.texts is not None else None
    cache = not distributed.is_sharded(trainer)  # cached bf16 copies of gathered blocks would add up to a whole model
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16, cache_enabled=cache):
        return trainer(latents, settings, gen, retrieval, text, rollout, unrolled)


def choose_bf16(trainer: torch.nn.Module, settings: TrainSettings, data: TrainingData) -> bool:
    """bf16 autocast if a real training step (forward + backward, no update) runs faster with it here."""
    def step(bf16: bool) -> None:
        step_loss(trainer, settings, 0, 0, data, bf16).backward()
        trainer.zero_grad(set_to_none=True)

    return bf16_is_faster(step, next(trainer.parameters()).device.type)


def save_checkpoint(models: Models, optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int,
                    is_main: bool = True) -> None:
    """dit.safetensors, or with LoRA lora.safetensors (ComfyUI's LoRA key names) naming its base file. Every process
    calls it: sharded (FSDP) weights and optimizer state are gathered whole to rank 0, which alone writes, so the
    files are the same as a single process's."""
    out = Path(settings.out)
    meta = {"stage": settings.stage, "step": str(step), "settings": json.dumps(asdict(settings), default=str)}
    dit = distributed.full_state(models.dit.state_dict(), is_main) if models.lora is None else {}
    encoder = distributed.full_state(models.encoder.state_dict(), is_main) if models.encoder is not None else {}
    state = optimizer.state_dict()
    tensors = distributed.full_state({f"{index}.{key}": value for index, entry in state["state"].items()
                                      for key, value in entry.items()}, is_main)
    if not is_main:
        return
    if models.lora is not None:
        save_lora(models.lora, out / "lora.safetensors", {**meta, "base": str(start_files(settings)[0].resolve())})
    else:
        save_model(dit, models.dit.config, out / "dit.safetensors", "dit", meta)
    if models.encoder is not None:
        save_model(encoder, models.encoder.config, out / "encoder.safetensors", "memory_encoder", meta)
    save_tensors(tensors, out / "optimizer.safetensors",
                 {"step": str(step), "param_groups": json.dumps(state["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> int:
    tensors, metadata = read_safetensors(path, "resume")
    state: dict[int, dict[str, torch.Tensor]] = {}
    try:
        params = [p for group in optimizer.param_groups for p in group["params"]]
        for name, value in tensors.items():
            index, key = name.split(".", 1)
            if not 0 <= int(index) < len(params):
                raise IndexError(f"state of parameter {index}, but {len(params)} are trained")
            like = params[int(index)]  # a moment of a sharded parameter becomes this process's shard of it
            shaped = distributed.distribute_like(value, like) if value.shape == like.shape else value
            state.setdefault(int(index), {})[key] = shaped
        groups = limits.parse_json(metadata["param_groups"], "param_groups")  # capped: hostile metadata would recurse
        optimizer.load_state_dict({"state": state, "param_groups": groups})
        return int(metadata["step"])
    except (KeyError, ValueError, TypeError, IndexError) as error:
        raise CheckpointError(f"out: {path} holds unreadable optimizer state ({error}); delete it to start the "
                              "training over, or choose another --out") from None


def resume_step(models: Models, optimizer: torch.optim.Optimizer, settings: TrainSettings) -> int:
    """Continue from the checkpoint in `out` if there is one; returns the first step to run."""
    out = Path(settings.out)
    if not (out / "optimizer.safetensors").exists():
        return 0
    saved_encoder = (out / "encoder.safetensors").exists()
    if saved_encoder != (models.encoder is not None):
        raise CheckpointError(f"out: {out} holds a training {'with' if saved_encoder else 'without'} memory; "
                              f"{'drop' if saved_encoder else 'add'} --no-memory to resume it, or choose another --out")
    if models.lora is not None:
        load_lora_into(models.lora, out / "lora.safetensors", "out")
    else:
        load_whole(models.dit, same_config(load_dit(out / "dit.safetensors", "out"), models.dit, out))
    if models.encoder is not None:
        load_whole(models.encoder, same_config(load_encoder(out / "encoder.safetensors"), models.encoder, out))
    step = load_optimizer(optimizer, out / "optimizer.safetensors")
    check_same_step(out, step)
    return step + 1


def check_same_step(out: Path, optimizer_step: int) -> None:
    """A checkpoint is several files written one after the other: a write that failed part-way (full disk) leaves
    newer weights beside an older optimizer. Resuming that would mix two steps, so it is refused."""
    from safetensors import safe_open

    for name in ("dit.safetensors", "lora.safetensors", "encoder.safetensors"):
        if (out / name).is_file():
            with safe_open(str(out / name), "pt") as f:
                step = (f.metadata() or {}).get("step")
            if step is not None and step != str(optimizer_step):
                raise CheckpointError(
                    f"out: {out} holds a checkpoint torn by a failed write ({name} at step {step}, "
                    f"optimizer.safetensors at step {optimizer_step}); to go on from the weights, move them to a "
                    "folder and pass it as --init-from with a new --out")


def load_whole(module: torch.nn.Module, saved: torch.nn.Module) -> None:
    """`saved`'s weights into `module`, each cut to this process's shard when `module` is sharded (FSDP)."""
    current = module.state_dict()
    module.load_state_dict({name: distributed.distribute_like(value, current[name])
                            for name, value in saved.state_dict().items()})


def same_config(saved: torch.nn.Module, current: torch.nn.Module, out: Path) -> torch.nn.Module:
    """`saved` if it was trained with the config being trained now, else a one-line CheckpointError naming what
    differs (another --rate, --variant or --model on the same --out)."""
    changed = [f"{name} {value} there, {getattr(current.config, name)} now"
               for name, value in asdict(saved.config).items() if value != asdict(current.config)[name]]
    if changed:
        raise CheckpointError(f"out: {out} holds a training of another configuration ({'; '.join(changed)}); resume "
                              "it with the flags it started with, or choose another --out")
    return saved


@dataclass
class Run:
    models: Models
    optimizer: torch.optim.Optimizer
    first_step: int
    data: TrainingData


def prepare(settings: TrainSettings, process: Process, progress: bool = True) -> Run:
    """Models on this process's device, AdamW over the trainable parameters only (LoRA + encoder with LoRA),
    and the state of the checkpoint in `out` if there is one."""
    data = load_training_data(settings, progress=progress and process.is_main)  # before the models: a bad folder fails fast
    models = build_models(settings)
    # FSDP before the optimizer: it replaces the parameters with their shards (and moves them to the device)
    models = distributed.shard(models, process) if settings.fsdp else models.to(process.device)
    if isinstance(data.texts, TextEmbeddings):
        data.texts.check_text_dim(models.dit.config.text_dim, models.dit.config.name)
    optimizer = torch.optim.AdamW(models.trainable(), lr=settings.lr, weight_decay=0.0)
    return Run(models, optimizer, resume_step(models, optimizer, settings), data)


def append_log(path: Path, entries: list[dict]) -> None:
    """Written just before the checkpoint; trim_log makes the two agree again when the checkpoint write failed."""
    with open(path, "a") as log:
        log.writelines(json.dumps(entry) + "\n" for entry in entries)


def trim_log(path: Path, first_step: int) -> None:
    """Keep only the lines of steps before `first_step`, the step the checkpoint resumes at: lines of steps
    whose checkpoint write failed (or were cut by a crash) would otherwise be logged twice by the resumed run."""
    if not path.exists():
        return
    lines = path.read_text(errors="replace").splitlines(keepends=True)
    kept = [line for line in lines if (step := logged_step(line)) is not None and step < first_step]
    if kept != lines:
        write_bytes(path, "".join(kept).encode())


def logged_step(line: str) -> int | None:
    """The step of a loss.jsonl line, None for a line that is cut or not one of ours."""
    try:
        entry = limits.parse_json(line, "loss.jsonl")  # capped: a damaged line costs nothing
    except ValueError:
        return None
    step = entry.get("step") if isinstance(entry, dict) else None
    return step if isinstance(step, int) and line.endswith("\n") else None


def run_steps(run: Run, settings: TrainSettings, process: Process, progress: bool = True) -> list[float]:
    """Steps first_step..steps-1; returns each step's loss averaged over all processes. Rank 0 writes."""
    trainer = distributed.wrap(run.models, process)
    if settings.bf16 is None:
        settings = replace(settings, bf16=choose_bf16(trainer, settings, run.data))
        if process.is_main and progress:
            report(f"{settings.stage}: {'bf16 autocast' if settings.bf16 else 'fp32'} (measured faster on this machine)")
    out = Path(settings.out)
    if process.is_main:
        out.mkdir(parents=True, exist_ok=True)
        trim_log(out / "loss.jsonl", run.first_step)
    losses: list[float] = []
    pending: list[dict] = []
    bar = tqdm(range(run.first_step, settings.steps), desc=settings.stage, disable=not (progress and process.is_main),
               initial=run.first_step, total=settings.steps)
    for step in bar:
        loss = distributed.mean(train_step(trainer, run.optimizer, settings, step, process.rank, run.data), process)
        losses.append(loss)
        pending.append({"step": step, "loss": loss})
        bar.set_postfix(loss=f"{loss:.4f}")
        saving = (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps
        stop_if_diverged(run.models, loss, step, settings, check_weights=saving)
        if saving:
            if process.is_main:
                append_log(out / "loss.jsonl", pending)
            save_checkpoint(run.models, run.optimizer, settings, step, process.is_main)  # gathers on every process
            pending = []
    return losses


def stop_if_diverged(models: Models, loss: float, step: int, settings: TrainSettings, check_weights: bool) -> None:
    """A non-finite loss (or, before a checkpoint, non-finite weights) stops the run before anything is written:
    the last good checkpoint in `out` stays as it was."""
    weights_ok = not check_weights or distributed.all_finite(models.trainable())
    if not (math.isfinite(loss) and weights_ok):
        cause = f"loss {loss:.4g}" if not math.isfinite(loss) else "NaN or infinite weights"
        raise ValueError(f"lr: training diverged at step {step} ({cause}); the last checkpoint in {settings.out} is "
                         f"kept; lower --lr (now {settings.lr:g}) and run again")


def train(settings: TrainSettings, progress: bool = True) -> list[float]:
    """Run (or resume) a training stage, in one process or under torchrun; returns the losses of the steps run now."""
    process = distributed.start(settings.device)
    try:
        run = prepare(settings, process, progress)  # first: bad data or models fail before `out` is made
        with out_folder_lock(settings, process):
            return run_steps(run, settings, process, progress)
    finally:
        distributed.stop(process)


def out_folder_lock(settings: TrainSettings, process: Process) -> contextlib.AbstractContextManager:
    """Rank 0 locks `out` for the whole run: a second training on the same folder is refused, not interleaved."""
    if not process.is_main:
        return contextlib.nullcontext()
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    return FolderLock(Path(settings.out), "out")
