"""Frame retrieval evaluation (the paper's Table 1 measure): how well random past frames come back from memory.

For each held-out procedural video the memory is computed once, then randomly chosen past frames are generated
from pure noise at their own time positions, conditioned only on that memory. Reported next to reference
figures on the same frames: a gray frame, the video's mean frame, and optionally the same DiT without memory.
"""
from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from ..training import procedural
from ..model.dit import WanDiT
from ..model.encoder import MemoryEncoder
from ..model.flow import sample, sampling_sigmas
from ..model.memory import Memory
from .metrics import masked_psnr, psnr, ssim
from ..model.vae import SpaceToDepthVAE


@dataclass
class RetrievalSettings:
    videos: int = 16
    seed: int = 0
    history_frames: int = 64
    targets: int = 4
    steps: int = 12
    shift: float = 1.0
    size: int = 32

    def __post_init__(self) -> None:
        if self.history_frames < self.targets:  # the targets are distinct past frames
            raise ValueError(f"history-frames: {self.history_frames} is fewer than the {self.targets} past frames "
                             f"retrieved per video; use at least {self.targets}")


def retrieve(dit: WanDiT, memory: Memory | None, frame_times: torch.Tensor, latent_shape: tuple[int, ...],
             settings: RetrievalSettings, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Sampled and one-step (conditional mean) latents of the frames at `frame_times` [1, K]."""
    noise = torch.randn(latent_shape, generator=generator)
    context = torch.zeros(1, 1, dit.config.text_dim)
    velocity = lambda x, sigma: dit(x, sigma * 1000, context, memory, frame_times)
    one_step = noise - velocity(noise, torch.ones(1))
    return sample(velocity, noise, sampling_sigmas(settings.steps, settings.shift)), one_step


def score(pred_pixels: torch.Tensor, true_pixels: torch.Tensor, object_masks: torch.Tensor) -> dict[str, list[float]]:
    """[1, 3, K, H, W] pairs and [K, H, W] object masks -> per-frame PSNR, SSIM, and PSNR over the moving objects
    and over the background separately (NaN for a frame without objects)."""
    pred, true = pred_pixels[0].transpose(0, 1), true_pixels[0].transpose(0, 1)
    return {"psnr": psnr(pred, true).tolist(), "ssim": ssim(pred, true).tolist(),
            "psnr_object": masked_psnr(pred, true, object_masks).tolist(),
            "psnr_background": masked_psnr(pred, true, ~object_masks).tolist()}


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
    scores: dict[str, dict[str, list[float]]] = {}

    for i in range(settings.videos):
        video = procedural.make_video(procedural.heldout_seed(settings.seed * 10_000 + i), settings.history_frames,
                                      settings.size, dit.config.fps)
        pixels = procedural.to_pixels(video.frames[None])
        latents = vae.encode(pixels)
        memory = encoder.encode(latents, dit.config.fps) if encoder is not None else None
        frame_times = torch.tensor([rng.sample(range(settings.history_frames), settings.targets)])
        true = pixels[:, :, frame_times[0]]
        object_masks = torch.from_numpy(video.object_masks)[frame_times[0]]
        add = lambda name, pred, true=true, masks=object_masks: extend(scores.setdefault(name, {}), score(pred, true, masks))
        shape = (1, latents.shape[1], settings.targets, *latents.shape[3:])
        sampled, one_step = retrieve(dit, memory, frame_times, shape, settings, generator)
        columns = [true, vae.decode(sampled), vae.decode(one_step), pixels.mean(dim=2, keepdim=True).expand_as(true)]
        add("memory", columns[1])
        add("memory_one_step", columns[2])
        add("gray", torch.zeros_like(true))
        add("mean_frame", columns[3])
        if no_memory_dit is not None:
            sampled, one_step = retrieve(no_memory_dit, None, frame_times, shape, settings, generator)
            columns.append(vae.decode(sampled))
            add("no_memory", columns[-1])
            add("no_memory_one_step", vae.decode(one_step))
        if i < example_videos:
            examples.append(example_row(columns))
    return summarise(scores, settings), torch.cat(examples, dim=0) if examples else torch.zeros(0, 0, 3, dtype=torch.uint8)


def extend(collected: dict[str, list[float]], new: dict[str, list[float]]) -> None:
    for metric, values in new.items():
        collected.setdefault(metric, []).extend(values)


def summarise(scores: dict[str, dict[str, list[float]]], settings: RetrievalSettings) -> dict:
    """Means over all scored frames (frames without objects are left out of the object figure)."""
    figures = {name: {metric: nan_mean(values) for metric, values in metrics.items()} for name, metrics in scores.items()}
    one_step = {f"{metric}_one_step": value for metric, value in figures["memory_one_step"].items()}
    return {**figures["memory"], **one_step, "frames": len(scores["memory"]["psnr"]), "videos": settings.videos,
            "history_frames": settings.history_frames, "steps": settings.steps, "seed": settings.seed,
            "baselines": {name: figures[name] for name in figures if not name.startswith("memory")}}


def nan_mean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return round(sum(kept) / len(kept), 4) if kept else float("nan")
