"""DDPM ancestral sampling (Ho et al. 2020, Algorithm 2), on a strided timestep grid.

One step from t to the previous grid point s samples the forward-process posterior with x_0
replaced by the model's estimate (Ho et al. 2020, eqs. 6-7; with strides, alpha_t := ab_t / ab_s
and beta_t := 1 - alpha_t, as in Nichol & Dhariwal 2021, Sec. 4):
  mu = sqrt(ab_s) beta_t / (1 - ab_t) x0_hat + sqrt(alpha_t) (1 - ab_s) / (1 - ab_t) x_t   (eq. 7)
  x_s = mu + sigma_t z,  sigma_t^2 = beta_tilde = (1 - ab_s) / (1 - ab_t) beta_t  ("small", eq. 7)
                                  or sigma_t^2 = beta_t                             ("large")
No noise on the last step (ab_s = 1), as in Algorithm 2's "z = 0 if t = 1".
With the small variance this is DDIM at eta = 1 written the other way round (Song et al. 2021).

Matches diffusers' DDPMScheduler(clip_sample=False, variance_type="fixed_small"|"fixed_large")
with the same timestep_spacing; diffusers also adds 1e-10 * z on a last step at t > 0 (its
variance floor), which is below any tolerance here.
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

POSTERIOR_VARIANCES = ("small", "large")


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    num_steps: int,
    *,
    cond: Any = None,
    guidance: Any = None,
    generator: torch.Generator | None = None,
    callback: Callback | None = None,
    posterior_variance: str = "small",  # "small" = beta_tilde, "large" = beta (Ho et al. Sec. 3.2)
    timestep_spacing: str = "trailing",  # see common.spaced_timesteps
    steps_offset: int = 0,  # added to "leading" timesteps
) -> torch.Tensor:
    """x_T (B, ...) ~ N(0, I) -> x_0 (B, ...)."""
    check_x_T(x_T)
    if posterior_variance not in POSTERIOR_VARIANCES:
        raise ValueError(
            f"unknown posterior_variance {posterior_variance!r}; "
            f"choose one of {POSTERIOR_VARIANCES}"
        )
    denoiser = resolve_denoiser(denoiser, guidance)
    grid = timestep_grid(denoiser.schedule, num_steps, timestep_spacing, steps_offset, integer=True)
    x = x_T
    for i in range(grid.num_steps):
        t, ab, ab_prev = float(grid.t[i]), float(grid.ab[i]), float(grid.ab_next[i])
        x0, _ = denoiser.predict_x0_eps(x, t, cond, ab)
        if callback is not None:
            callback(i, grid.num_steps, t, x, x0)
        alpha_t = ab / ab_prev
        beta_t = 1 - alpha_t
        mean = (ab_prev**0.5 * beta_t / (1 - ab)) * x0 + (
            alpha_t**0.5 * (1 - ab_prev) / (1 - ab)
        ) * x
        if ab_prev == 1.0:  # last step: return the posterior mean, no noise
            x = mean
            continue
        variance = (1 - ab_prev) / (1 - ab) * beta_t if posterior_variance == "small" else beta_t
        x = mean + variance**0.5 * draw_noise(x, generator)
    return x
