"""Training: stage 1 retrieves random past frames through memory (frame preservation), stage 2 generates the
next chunk from memory. Same rectified-flow loss; only what is noised and where it sits in time differ.

Batches are procedural videos, or clips of the user's videos (`data`, pfp_core/video_dataset.py), chosen by
(seed, step), so a resumed run sees exactly the batches it would have seen and continues the same loss curve.
The text context is the zero (empty-prompt) context, or the caption of each clip looked up in precomputed
embeddings (`text_embeddings`, pfp_core/text_embeddings.py).
"""
from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from . import procedural
from .atomic import save_tensors
from .checkpoint import load_dit, load_encoder, read_safetensors, save_model
from .config import dit_config, encoder_config_for
from .dit import WanDiT
from .encoder import MemoryEncoder
from .flow import add_noise, flow_loss, training_sigmas
from .memory import Memory
from .text_embeddings import FrameCaptions, TextEmbeddings, load_text_embeddings
from .vae import SpaceToDepthVAE
from .video_dataset import VideoClips, VideoFolder, report

STAGES = ("pretrain", "finetune")


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
    lr: float = 1e-3
    warmup: int = 50
    shift: float = 1.0
    seed: int = 0
    use_memory: bool = True  # False trains the no-memory baseline
    bf16: bool = True
    checkpoint_every: int = 100
    model: str = "tiny"
    rate: str = "4x4x2"
    variant: str = "proposed"
    size: int = 32
    init_from: Path | None = None  # finetune starts from a pretrain output folder
    data: Path | None = None  # folder of the user's videos; None: procedural videos
    text_embeddings: Path | None = None  # precomputed caption embeddings; None: zero context

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ValueError(f"stage: '{self.stage}' is unknown; use pretrain or finetune")


@dataclass
class Models:
    dit: WanDiT
    encoder: MemoryEncoder | None

    def parameters(self) -> list[torch.nn.Parameter]:
        modules = [self.dit] + ([self.encoder] if self.encoder is not None else [])
        return [p for m in modules for p in m.parameters()]


@dataclass
class TrainingData:
    videos: VideoFolder | None  # None: procedural videos
    texts: TextEmbeddings | None  # None: the zero context


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
    elif captions:
        report("warning: --data has caption files but no --text-embeddings was given: training without text "
               "(build the file with `python -m pfp_core embed-texts`)")
    return TrainingData(videos, texts)


def build_models(settings: TrainSettings) -> Models:
    torch.manual_seed(settings.seed)
    if settings.init_from is not None:
        folder = Path(settings.init_from)
        encoder = load_encoder(folder / "encoder.safetensors") if settings.use_memory else None
        return Models(load_dit(folder / "dit.safetensors").train(), encoder.train() if encoder else None)
    dit = WanDiT(dit_config(settings.model))
    encoder = MemoryEncoder(encoder_config_for(settings.model, settings.rate, settings.variant)) if settings.use_memory else None
    return Models(dit, encoder)


def step_rng(settings: TrainSettings, step: int) -> random.Random:
    return random.Random(settings.seed * 1_000_003 + step)


def batch_videos(settings: TrainSettings, data: TrainingData, rng: random.Random, frames: int) -> VideoClips:
    if data.videos is not None:
        return data.videos.clips(rng, settings.batch, frames)
    seeds = [rng.randrange(len(procedural.TRAIN_SEEDS)) for _ in range(settings.batch)]
    pixels = procedural.video_batch(seeds, frames, settings.size, dit_config(settings.model).fps)
    return VideoClips(pixels, [[""] * frames for _ in seeds])


def encode_memory(models: Models, history_latents: torch.Tensor, fps: int) -> Memory | None:
    return models.encoder.encode(history_latents, fps) if models.encoder is not None else None


def retrieval_loss(models: Models, latents: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                   text: FrameCaptions | None = None) -> torch.Tensor:
    """Stage 1: noise `targets` random frames of the history and denoise them at their own time positions."""
    b, _, t = latents.shape[:3]
    memory = encode_memory(models, latents, dit_config(settings.model).fps)
    frame_times = torch.stack([torch.randperm(t, generator=gen)[: settings.targets] for _ in range(b)])
    index = frame_times[:, None, :, None, None].expand(-1, latents.shape[1], -1, *latents.shape[3:])
    x0 = latents.gather(2, index)
    return denoising_loss(models, x0, memory, frame_times, settings, gen, text)


def next_chunk_loss(models: Models, latents: torch.Tensor, settings: TrainSettings, gen: torch.Generator,
                    text: FrameCaptions | None = None) -> torch.Tensor:
    """Stage 2: the last chunk of the clip is generated from the memory of everything before it."""
    split = latents.shape[2] - settings.chunk_frames
    memory = encode_memory(models, latents[:, :, :split], dit_config(settings.model).fps)
    frame_times = torch.arange(split, latents.shape[2]).expand(latents.shape[0], -1)
    return denoising_loss(models, latents[:, :, split:], memory, frame_times, settings, gen, text)


def denoising_loss(models: Models, x0: torch.Tensor, memory: Memory | None, frame_times: torch.Tensor,
                   settings: TrainSettings, gen: torch.Generator, text: FrameCaptions | None = None) -> torch.Tensor:
    noise = torch.randn(x0.shape, generator=gen)
    sigma = training_sigmas(x0.shape[0], settings.shift, gen)
    if text is not None:
        context = text.context(frame_times)
    else:  # no embeddings: the empty prompt as a zero context
        context = torch.zeros(x0.shape[0], 1, models.dit.config.text_dim)
    velocity = models.dit(add_noise(x0, noise, sigma), sigma * 1000, context, memory, frame_times)
    return flow_loss(velocity, x0, noise)


def train_step(models: Models, optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int,
               data: TrainingData | None = None) -> float:
    """`data` from load_training_data; loaded here when not given (a folder scan: pass it in loops)."""
    data = data if data is not None else load_training_data(settings)
    rng = step_rng(settings, step)
    gen = torch.Generator().manual_seed(rng.randrange(2**31))
    history = rng.choice(settings.history_frames)
    retrieval = settings.stage == "pretrain" or rng.random() < settings.retrieval_mix
    frames = history + (0 if retrieval else settings.chunk_frames)
    clips = batch_videos(settings, data, rng, frames)
    latents = SpaceToDepthVAE().encode(clips.pixels)
    text = FrameCaptions(clips.captions, data.texts, models.dit.config.text_len) if data.texts is not None else None
    loss_fn = retrieval_loss if retrieval else next_chunk_loss
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=settings.bf16):
        loss = loss_fn(models, latents, settings, gen, text)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(models.parameters(), 1.0)
    for group in optimizer.param_groups:
        group["lr"] = settings.lr * min(1.0, (step + 1) / settings.warmup)
    optimizer.step()
    return loss.item()


def save_checkpoint(models: Models, optimizer: torch.optim.Optimizer, settings: TrainSettings, step: int) -> None:
    out = Path(settings.out)
    meta = {"stage": settings.stage, "step": str(step), "settings": json.dumps(asdict(settings), default=str)}
    save_model(models.dit, models.dit.config, out / "dit.safetensors", "dit", meta)
    if models.encoder is not None:
        save_model(models.encoder, models.encoder.config, out / "encoder.safetensors", "memory_encoder", meta)
    save_optimizer(optimizer, out / "optimizer.safetensors", step)


def save_optimizer(optimizer: torch.optim.Optimizer, path: Path, step: int) -> None:
    state = optimizer.state_dict()
    tensors = {f"{index}.{key}": value.contiguous() for index, entry in state["state"].items()
               for key, value in entry.items()}
    save_tensors(tensors, path, {"step": str(step), "param_groups": json.dumps(state["param_groups"])})


def load_optimizer(optimizer: torch.optim.Optimizer, path: Path) -> int:
    tensors, metadata = read_safetensors(path, "resume")
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        index, key = name.split(".", 1)
        state.setdefault(int(index), {})[key] = value
    optimizer.load_state_dict({"state": state, "param_groups": json.loads(metadata["param_groups"])})
    return int(metadata["step"])


def resume_step(models: Models, optimizer: torch.optim.Optimizer, settings: TrainSettings) -> int:
    """Continue from the checkpoint in `out` if there is one; returns the first step to run."""
    out = Path(settings.out)
    if not (out / "optimizer.safetensors").exists():
        return 0
    models.dit.load_state_dict(load_dit(out / "dit.safetensors").state_dict())
    if models.encoder is not None:
        models.encoder.load_state_dict(load_encoder(out / "encoder.safetensors").state_dict())
    return load_optimizer(optimizer, out / "optimizer.safetensors") + 1


def train(settings: TrainSettings, progress: bool = True) -> list[float]:
    """Run (or resume) a training stage; returns the losses of the steps run now."""
    data = load_training_data(settings, progress)  # before the models: a bad folder fails fast
    models = build_models(settings)
    if data.texts is not None:
        data.texts.check_text_dim(models.dit.config.text_dim, models.dit.config.name)
    optimizer = torch.optim.AdamW(models.parameters(), lr=settings.lr, weight_decay=0.0)
    first = resume_step(models, optimizer, settings)
    Path(settings.out).mkdir(parents=True, exist_ok=True)
    losses: list[float] = []
    bar = tqdm(range(first, settings.steps), desc=settings.stage, disable=not progress, initial=first, total=settings.steps)
    with open(Path(settings.out) / "loss.jsonl", "a") as log:
        for step in bar:
            loss = train_step(models, optimizer, settings, step, data)
            losses.append(loss)
            log.write(json.dumps({"step": step, "loss": loss}) + "\n")
            bar.set_postfix(loss=f"{loss:.4f}")
            if (step + 1) % settings.checkpoint_every == 0 or step + 1 == settings.steps:
                log.flush()
                save_checkpoint(models, optimizer, settings, step)
    return losses
