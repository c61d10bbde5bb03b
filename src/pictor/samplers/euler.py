"""Euler's method on the probability-flow ODE (Karras et al. 2022, Algorithm 1 without the Heun
correction, i.e. k-diffusion's `sample_euler` with s_churn = 0).

In the Karras variables x~ = x_t / sqrt(ab_t), sigma = sqrt((1 - ab) / ab), the ODE is
dx~/dsigma = (x~ - D(x~; sigma)) / sigma (eq. 3 with sigma(t) = t), and one Euler step is
  x~_next = x~ + (sigma_next - sigma) d,   d = (x~ - x0_hat) / sigma = eps_hat.
Because x~ = x0_hat + sigma eps_hat, this equals x~_next = x0_hat + sigma_next eps_hat, which we
evaluate in that form: it needs no division by sigma, so it also starts from sigma = inf
(alpha_bar_T = 0, zero terminal SNR). Converted back, x_next = sqrt(ab_next) x~_next.
(On the same grid this is deterministic DDIM; by default Euler uses the "linspace" grid of
k-diffusion / A1111 / diffusers' Euler: t = linspace(T-1, 0, N), fractional.)

Matches diffusers' EulerDiscreteScheduler with the same timestep_spacing, except:
- the starting point: x_T here is N(0, I) noise of the variance-preserving process, so
  x~_T = x_T sqrt(1 + sigma_max^2) exactly; diffusers scales its noise by sigma_max for
  "linspace"/"trailing" spacing (its init_noise_sigma), a 1/(2 sigma_max^2) relative difference;
- at fractional timesteps we interpolate log sigma (k-diffusion; the inverse of sigma_to_t),
  diffusers interpolates sigma linearly (identical at integer timesteps).
"""

from __future__ import annotations

from typing import Any

import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.samplers.common import Callback, check_x_T, resolve_denoiser, timestep_grid


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    num_steps: int,
    *,
    cond: Any = None,
    guidance: Any = None,
    generator: torch.Generator | None = None,  # unused: this Euler sampler is deterministic
    callback: Callback | None = None,
    timestep_spacing: str = "linspace",  # k-diffusion's grid, fractional t; see spaced_timesteps
    steps_offset: int = 0,  # added to "leading" timesteps
) -> torch.Tensor:
    """x_T (B, ...) ~ N(0, I) -> x_0 (B, ...)."""
    check_x_T(x_T)
    denoiser = resolve_denoiser(denoiser, guidance)
    grid = timestep_grid(
        denoiser.schedule, num_steps, timestep_spacing, steps_offset, integer=False
    )
    x = x_T
    for i in range(grid.num_steps):
        t, ab, ab_next = float(grid.t[i]), float(grid.ab[i]), float(grid.ab_next[i])
        x0, eps = denoiser.predict_x0_eps(x, t, cond, ab)
        if callback is not None:
            callback(i, grid.num_steps, t, x, x0)
        sigma_next = ((1 - ab_next) / ab_next) ** 0.5
        x = ab_next**0.5 * (x0 + sigma_next * eps)  # x~_next = x0 + sigma_next d, back to VP
    return x
