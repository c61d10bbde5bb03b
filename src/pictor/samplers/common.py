"""What every sampler shares: the timestep grid, Karras sigmas, seeded noise, guidance, checks.

Conventions used by all samplers:
- the state x is always in the variance-preserving space of the training process,
  x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, so x_T ~ N(0, I) is the input and x_0 the output;
- a step goes from noise level ab (model evaluated there) to ab_next; the last ab_next is 1
  (sigma = 0), i.e. the last step lands on the clean sample (diffusers' `set_alpha_to_one=True`,
  `final_sigmas_type="zero"`);
- stochastic noise is drawn in float32 on the CPU from the caller's generator, then moved to x's
  device and dtype: one seed gives one image on any device and in any precision.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.schedules import NoiseSchedule

TIMESTEP_SPACINGS = ("leading", "trailing", "linspace")
# alpha_bar of the largest finite sigma used to shape a Karras ramp under zero terminal SNR
# (diffusers clamps alpha_bar_T to the same 2**-24, i.e. sigma_max ~ 4096).
ZERO_SNR_ALPHA_BAR_FLOOR = 2.0**-24

Callback = Callable[[int, int, float, torch.Tensor, torch.Tensor], None]


@dataclass(frozen=True)
class TimestepGrid:
    """The noise levels one sampling run visits, step i going from ab[i] to ab_next[i]."""

    t: torch.Tensor  # (N,) float64 training timesteps given to the model (may be fractional)
    ab: torch.Tensor  # (N,) float64 alpha_bar where the model is evaluated
    ab_next: torch.Tensor  # (N,) float64 alpha_bar after the step; ab_next[-1] = 1 (clean)

    @property
    def num_steps(self) -> int:
        return int(self.t.numel())


def spaced_timesteps(
    num_train_timesteps: int, num_steps: int, spacing: str = "trailing", steps_offset: int = 0
) -> torch.Tensor:
    """num_steps training timesteps in decreasing order, float64 (N,).

    - "trailing": round(T - i T/N) - 1, i = 0..N-1: always starts at the last timestep T-1
      (Lin et al. 2024, Sec. 3.3, Table 2); the default of every sampler but Euler.
    - "leading": i * (T // N) + steps_offset (DDIM paper / Stable Diffusion v1 configs).
    - "linspace": linspace(0, T-1, N), fractional (Euler's default, as k-diffusion and A1111;
      DDPM/DDIM/DPM-Solver round it).
    """
    check_num_steps(num_steps, num_train_timesteps)
    n, total = num_steps, num_train_timesteps
    i = torch.arange(n, dtype=torch.float64)
    if spacing == "trailing":
        # numpy's arange arithmetic (as diffusers) for identical rounding; [:n] drops the extra
        # point (t = -1) that float error makes arange emit for some N, e.g. N = 7
        t = torch.from_numpy(np.round(np.arange(total, 0, -total / n))[:n] - 1)
    elif spacing == "leading":
        t = (i * (total // n) + steps_offset).flip(0)
    elif spacing == "linspace":
        t = torch.linspace(0, total - 1, n, dtype=torch.float64).flip(0)
    else:
        raise ValueError(f"unknown timestep spacing {spacing!r}; choose one of {TIMESTEP_SPACINGS}")
    if bool((t < 0).any()) or bool((t > total - 1).any()):
        raise ValueError(
            f"spacing {spacing!r} with steps_offset={steps_offset} and num_steps={num_steps} gives "
            f"timesteps outside [0, {total - 1}]; lower steps_offset or num_steps"
        )
    return t


def timestep_grid(
    schedule: NoiseSchedule,
    num_steps: int,
    spacing: str = "trailing",
    steps_offset: int = 0,
    integer: bool = True,
) -> TimestepGrid:
    """The grid of `spaced_timesteps`, each step ending at the next timestep (the last at ab = 1).

    integer=True rounds the timesteps (samplers that index the discrete schedule).
    """
    t = spaced_timesteps(schedule.num_timesteps, num_steps, spacing, steps_offset)
    if integer:
        t = t.round()
    ab = schedule.alpha_bar_at(t)
    return TimestepGrid(t=t, ab=ab, ab_next=torch.cat([ab[1:], torch.ones(1, dtype=torch.float64)]))


def karras_sigmas(
    sigma_min: float, sigma_max: float, num_steps: int, rho: float = 7.0
) -> torch.Tensor:
    """Karras et al. 2022, eq. 5:
    sigma_i = (smax^(1/rho) + i/(N-1) (smin^(1/rho) - smax^(1/rho)))^rho.

    float64 (N,), decreasing from sigma_max to sigma_min.
    """
    if not 0 < sigma_min < sigma_max < math.inf:
        raise ValueError(f"need 0 < sigma_min < sigma_max < inf, got {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, num_steps, dtype=torch.float64)
    inv_min, inv_max = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    sigmas = (inv_max + ramp * (inv_min - inv_max)) ** rho
    sigmas[0], sigmas[-1] = sigma_max, sigma_min  # exact ends (the power round-trips to ~1 ulp)
    return sigmas


def sigma_to_t(sigma: torch.Tensor, schedule: NoiseSchedule) -> torch.Tensor:
    """Fractional training timestep whose sigma is `sigma`, interpolating log sigma linearly.

    (The inverse used by k-diffusion's DiscreteSchedule and diffusers' `_sigma_to_t`.) float64.
    Values beyond the schedule's range are clamped to [0, T - 1].
    """
    log_sigmas = schedule.log_sigmas  # (T,) increasing; +inf at a zero-SNR end
    log_sigma = torch.as_tensor(sigma, dtype=torch.float64).clamp(min=1e-10).log()
    low = (torch.searchsorted(log_sigmas, log_sigma, right=True) - 1).clamp(
        0, log_sigmas.numel() - 2
    )
    lo, hi = log_sigmas[low], log_sigmas[low + 1]
    w = torch.where(torch.isinf(hi), torch.zeros_like(lo), (lo - log_sigma) / (lo - hi))
    t = low + w.clamp(0, 1)
    return torch.where(torch.isinf(log_sigma), torch.full_like(t, log_sigmas.numel() - 1), t)


def check_num_steps(num_steps: int, num_train_timesteps: int) -> None:
    if not isinstance(num_steps, int) or not 1 <= num_steps <= num_train_timesteps:
        raise ValueError(
            f"num_steps must be an int in [1, {num_train_timesteps}] (the training timesteps), "
            f"got {num_steps!r}"
        )


def check_x_T(x_T: torch.Tensor) -> None:
    if not isinstance(x_T, torch.Tensor) or not x_T.is_floating_point() or x_T.ndim < 1:
        raise ValueError("x_T must be a floating-point tensor (B, ...) of standard normal noise")


def draw_noise(like: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """Standard normal noise shaped like `like`: float32 on the CPU, then to like's device/dtype."""
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(
            "pass a CPU torch.Generator (torch.Generator().manual_seed(seed)); noise is drawn on "
            "the CPU so that a seed gives the same image on every device"
        )
    noise = torch.randn(like.shape, generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=like.device, dtype=like.dtype)


def resolve_denoiser(denoiser: Denoiser, guidance: Any) -> Denoiser:
    """Apply a guidance object (duck-typed like pictor.guidance.CFG: `.apply(denoiser)`)."""
    if guidance is None:
        return denoiser
    if not callable(getattr(guidance, "apply", None)):
        raise ValueError(
            "guidance must provide apply(denoiser) -> Denoiser, e.g. pictor.guidance.CFG; "
            f"got {type(guidance).__name__}"
        )
    return guidance.apply(denoiser)
