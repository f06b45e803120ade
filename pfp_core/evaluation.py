"""Frame retrieval evaluation (the paper's Table 1 measure): how well random past frames come back from memory.

For each held-out procedural video the memory is computed once, then randomly chosen past frames are generated
from pure noise at their own time positions, conditioned only on that memory. Reported next to reference
figures on the same frames: a gray frame, the video's mean frame, and optionally the same DiT without memory.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from . import procedural
from .dit import WanDiT
from .encoder import MemoryEncoder
from .flow import sample, sampling_sigmas
from .memory import Memory
from .metrics import psnr, ssim
from .vae import SpaceToDepthVAE


@dataclass
class RetrievalSettings:
    videos: int = 16
    seed: int = 0
    history_frames: int = 64
    targets: int = 4
    steps: int = 12
    shift: float = 1.0
    size: int = 32


def retrieve(dit: WanDiT, memory: Memory | None, frame_times: torch.Tensor, latent_shape: tuple[int, ...],
             settings: RetrievalSettings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled and one-step (conditional mean) latents of the frames at `frame_times` [1, K]."""
    noise = torch.randn(latent_shape, generator=generator)
    context = torch.zeros(1, 1, dit.config.text_dim)
    velocity = lambda x, sigma: dit(x, sigma * 1000, context, memory, frame_times)
    one_step = noise - velocity(noise, torch.ones(1))
    return sample(velocity, noise, sampling_sigmas(settings.steps, settings.shift)), one_step


def score(pred_pixels: torch.Tensor, true_pixels: torch.Tensor) -> tuple[list[float], list[float]]:
    """[1, 3, K, H, W] pairs -> per-frame PSNR and SSIM."""
    pred, true = pred_pixels[0].transpose(0, 1), true_pixels[0].transpose(0, 1)
    return psnr(pred, true).tolist(), ssim(pred, true).tolist()


def example_row(columns: list[torch.Tensor]) -> torch.Tensor:
    """Each [1, 3, K, H, W] column -> one uint8 row image: K frames down, one column per method."""
    tiles = [((c[0].clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(1, 2, 3, 0) for c in columns]
    return torch.cat([torch.cat(list(tile), dim=0) for tile in tiles], dim=1)  # [K*H, methods*W, 3]


@torch.no_grad()
def evaluate_retrieval(dit: WanDiT, encoder: MemoryEncoder | None, settings: RetrievalSettings,
                       no_memory_dit: WanDiT | None = None, example_videos: int = 3) -> tuple[dict, torch.Tensor]:
    """Returns the figures and an image of the first videos' frames: truth | memory | one-step | mean | (no memory)."""
    vae = SpaceToDepthVAE()
    examples: list[torch.Tensor] = []
    rng = random.Random(settings.seed)
    generator = torch.Generator().manual_seed(settings.seed)
    scores: dict[str, tuple[list[float], list[float]]] = {}

    def add(name: str, pred: torch.Tensor, true: torch.Tensor) -> None:
        p, s = score(pred, true)
        scores.setdefault(name, ([], []))[0].extend(p)
        scores[name][1].extend(s)

    for i in range(settings.videos):
        pixels = procedural.video_batch([procedural.heldout_seed(settings.seed * 10_000 + i)], settings.history_frames,
                                        settings.size, dit.config.fps)
        latents = vae.encode(pixels)
        memory = encoder.encode(latents, dit.config.fps) if encoder is not None else None
        frame_times = torch.tensor([rng.sample(range(settings.history_frames), settings.targets)])
        true = pixels[:, :, frame_times[0]]
        shape = (1, latents.shape[1], settings.targets, *latents.shape[3:])
        sampled, one_step = retrieve(dit, memory, frame_times, shape, settings, generator)
        columns = [true, vae.decode(sampled), vae.decode(one_step), pixels.mean(dim=2, keepdim=True).expand_as(true)]
        add("memory", columns[1], true)
        add("memory_one_step", columns[2], true)
        add("gray", torch.zeros_like(true), true)
        add("mean_frame", columns[3], true)
        if no_memory_dit is not None:
            sampled, one_step = retrieve(no_memory_dit, None, frame_times, shape, settings, generator)
            columns.append(vae.decode(sampled))
            add("no_memory", columns[-1], true)
            add("no_memory_one_step", vae.decode(one_step), true)
        if i < example_videos:
            examples.append(example_row(columns))
    return summarise(scores, settings), torch.cat(examples, dim=0) if examples else torch.zeros(0, 0, 3, dtype=torch.uint8)


def summarise(scores: dict[str, tuple[list[float], list[float]]], settings: RetrievalSettings) -> dict:
    mean = lambda values: round(sum(values) / len(values), 4)
    figures = {name: {"psnr": mean(p), "ssim": mean(s)} for name, (p, s) in scores.items()}
    result = {"psnr": figures["memory"]["psnr"], "ssim": figures["memory"]["ssim"],
              "psnr_one_step": figures["memory_one_step"]["psnr"], "ssim_one_step": figures["memory_one_step"]["ssim"],
              "frames": len(scores["memory"][0]), "videos": settings.videos, "history_frames": settings.history_frames,
              "steps": settings.steps, "seed": settings.seed,
              "baselines": {name: figures[name] for name in figures if not name.startswith("memory")}}
    return result
