"""Rectified flow: x_t = (1 - s) x_0 + s eps, the model predicts v = eps - x_0 (paper eq. for L and L_FT).

Timesteps given to Wan are s * 1000. The schedule is shifted toward high noise (shift > 1), as Wan does.
"""
from __future__ import annotations

from typing import Callable

import torch

Velocity = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_s, sigma [B]) -> v
StepCallback = Callable[[int, int, torch.Tensor], None]  # (step, total, current x0 estimate)
SOLVERS = ("euler", "heun")


def shift_sigmas(sigmas: torch.Tensor, shift: float) -> torch.Tensor:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def sampling_sigmas(steps: int, shift: float) -> torch.Tensor:
    """steps + 1 noise levels from 1 down to 0."""
    return shift_sigmas(torch.linspace(1.0, 0.0, steps + 1), shift)


def training_sigmas(batch: int, shift: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """Logit-normal noise levels (SD3), shifted like the sampling schedule."""
    return shift_sigmas(torch.sigmoid(torch.randn(batch, generator=generator)), shift)


def add_noise(x0: torch.Tensor, noise: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s = sigma.view(-1, *([1] * (x0.dim() - 1)))
    return (1 - s) * x0 + s * noise


def flow_loss(predicted_velocity: torch.Tensor, x0: torch.Tensor, noise: torch.Tensor,
              weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared velocity error; with `weights` [B], the weighted mean of the samples' errors."""
    error = (predicted_velocity.float() - (noise - x0).float()).pow(2)
    if weights is None:
        return error.mean()
    per_sample = error.flatten(1).mean(dim=1)
    return (weights * per_sample).sum() / weights.sum()


def guided(velocity_cond: Velocity, velocity_uncond: Velocity | None, scale: float) -> Velocity:
    """Classifier-free guidance: v = v_u + scale (v_c - v_u). Scale 1 skips the unconditional pass."""
    if velocity_uncond is None or scale == 1.0:
        return velocity_cond

    def velocity(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        v_u = velocity_uncond(x, sigma)
        return v_u + scale * (velocity_cond(x, sigma) - v_u)

    return velocity


def sample(velocity: Velocity, noise: torch.Tensor, sigmas: torch.Tensor, solver: str = "euler",
           callback: StepCallback | None = None) -> torch.Tensor:
    """Integrate dx/ds = v from s = 1 (noise) to s = 0. Heun is 2nd order (one extra evaluation per step,
    none on the last step to s = 0)."""
    if solver not in SOLVERS:
        raise ValueError(f"solver: '{solver}' is unknown; use one of {', '.join(SOLVERS)}")
    x = noise
    batch = noise.shape[0]
    total = len(sigmas) - 1
    for i in range(total):
        s, s_next = sigmas[i], sigmas[i + 1]
        v = velocity(x, s.expand(batch))
        x_euler = x + (s_next - s) * v
        if solver == "heun" and s_next > 0:
            v_next = velocity(x_euler, s_next.expand(batch))
            x = x + (s_next - s) * (v + v_next) / 2
        else:
            x = x_euler
        if callback is not None:
            callback(i + 1, total, x - s_next * v)
    return x
