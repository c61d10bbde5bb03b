"""DDIM (Song, Meng & Ermon 2021), deterministic at eta = 0, DDPM-like at eta = 1.

Eq. 12, from timestep t to the previous grid point s (ab = alpha_bar):
  x_s = sqrt(ab_s) x0_hat + sqrt(1 - ab_s - sigma_t^2) eps_hat + sigma_t z,   z ~ N(0, I)
Eq. 16: sigma_t = eta sqrt((1 - ab_s) / (1 - ab_t)) sqrt(1 - ab_t / ab_s).

Matches diffusers' DDIMScheduler(set_alpha_to_one=True, clip_sample=False) with the same
timestep_spacing, except: the previous timestep here is the next grid point, where diffusers uses
t - T // N (the two agree whenever N divides T).
"""

from __future__ import annotations

from typing import Any

import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.samplers.common import (
    Callback,
    check_x_T,
    draw_noise,
    resolve_denoiser,
    timestep_grid,
)


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    num_steps: int,
    *,
    cond: Any = None,
    guidance: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,  # 0 = deterministic DDIM, 1 = DDPM posterior variance
    timestep_spacing: str = "trailing",  # see common.spaced_timesteps
    steps_offset: int = 0,  # added to "leading" timesteps (1 in SD v1 configs)
) -> torch.Tensor:
    """x_T (B, ...) ~ N(0, I) -> x_0 (B, ...)."""
    check_x_T(x_T)
    if eta < 0:
        raise ValueError(f"eta must be >= 0, got {eta}")
    denoiser = resolve_denoiser(denoiser, guidance)
    grid = timestep_grid(denoiser.schedule, num_steps, timestep_spacing, steps_offset, integer=True)
    x = x_T
    for i in range(grid.num_steps):
        t, ab, ab_prev = float(grid.t[i]), float(grid.ab[i]), float(grid.ab_next[i])
        x0, eps = denoiser.predict_x0_eps(x, t, cond, ab)
        if callback is not None:
            callback(i, grid.num_steps, t, x, x0)
        sigma_t = eta * ((1 - ab_prev) / (1 - ab) * (1 - ab / ab_prev)) ** 0.5  # eq. 16
        x = ab_prev**0.5 * x0 + (1 - ab_prev - sigma_t**2) ** 0.5 * eps  # eq. 12
        if sigma_t > 0:
            x = x + sigma_t * draw_noise(x, generator)
    return x
