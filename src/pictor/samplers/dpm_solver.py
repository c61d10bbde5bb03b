"""DPM-Solver++(2M): the multistep second-order solver in data prediction (Lu et al. 2022b,
"DPM-Solver++", Algorithm 2), optionally on Karras et al. 2022 sigmas ("dpm++2m-karras").

Notation: alpha_t = sqrt(ab_t), sigma_t = sqrt(1 - ab_t), lambda_t = log(alpha_t / sigma_t) (half
log-SNR), h_i = lambda_{t_i} - lambda_{t_{i-1}}. One step from t_{i-1} to t_i:
  first order (eq. 5 with the data prediction; = DDIM):
      x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h_i} - 1) x0_{i-1}
  second order, multistep (Algorithm 2), with r_i = h_{i-1} / h_i:
      D_i = (1 + 1 / (2 r_i)) x0_{i-1} - 1 / (2 r_i) x0_{i-2}
      x_{t_i} = (sigma_{t_i} / sigma_{t_{i-1}}) x - alpha_{t_i} (e^{-h_i} - 1) D_i
The first step is first order (no history), and so is the last, which lands on sigma = 0 where
h is infinite (Algorithm 2's final step; diffusers' lower_order_final / final_sigmas_type="zero").
e^{-h} is evaluated as varsigma_next / varsigma with varsigma = sigma / alpha (the Karras sigma), so
alpha_bar = 0 (varsigma = inf) and alpha_bar = 1 (varsigma = 0) need no special case.

Matches diffusers' DPMSolverMultistepScheduler(algorithm_type="dpmsolver++", solver_order=2,
solver_type="midpoint", final_sigmas_type="zero") with the same timestep_spacing; with
karras_sigmas=True (use_karras_sigmas=True) the ramp runs from sigma(T-1) to sigma(0), the model
sees the fractional timestep sigma_to_t(sigma) and x0 is recovered at the Karras sigma itself.
Deliberate differences:
- diffusers hands the network integer timesteps (rounded; truncated for its "squaredcos_cap_v2"
  schedule); we keep them fractional like k-diffusion, so the network's t and the noise level
  used to read its output agree;
- "linspace" and "leading" are the grids of common.spaced_timesteps (diffusers' DPM variants
  place N + 1 points and drop the last);
- under zero terminal SNR the first step starts at alpha_bar = 0 exactly (diffusers clamps
  alpha_bar_T to 2^-24) and the step after it is first order (h_{i-1} is infinite).
"""

from __future__ import annotations

import math
from typing import Any

import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.schedules import NoiseSchedule
from pictor.samplers.common import (
    ZERO_SNR_ALPHA_BAR_FLOOR,
    Callback,
    TimestepGrid,
    check_num_steps,
    check_x_T,
    resolve_denoiser,
    sigma_to_t,
    timestep_grid,
)
from pictor.samplers.common import karras_sigmas as karras_ramp


def karras_grid(schedule: NoiseSchedule, num_steps: int, rho: float = 7.0) -> TimestepGrid:
    """Karras sigmas between the schedule's sigma(0) and sigma(T-1), then sigma = 0.

    With zero terminal SNR sigma(T-1) is infinite: the ramp is shaped with sigma_max at
    alpha_bar = 2^-24 and its first point is replaced by the true terminal level (ab = 0, t = T-1).
    """
    check_num_steps(num_steps, schedule.num_timesteps)
    sigmas = schedule.sigmas  # (T,)
    zero_snr = bool(torch.isinf(sigmas[-1]))
    floor = ZERO_SNR_ALPHA_BAR_FLOOR
    sigma_max = ((1 - floor) / floor) ** 0.5 if zero_snr else float(sigmas[-1])
    if num_steps > 1:
        ramp = karras_ramp(float(sigmas[0]), sigma_max, num_steps, rho)
    else:
        ramp = torch.tensor([sigma_max], dtype=torch.float64)
    if zero_snr:
        ramp[0] = math.inf
    t = sigma_to_t(ramp, schedule)  # fractional, as k-diffusion (diffusers rounds, see above)
    ab = 1.0 / (1.0 + ramp**2)
    return TimestepGrid(t=t, ab=ab, ab_next=torch.cat([ab[1:], torch.ones(1, dtype=torch.float64)]))


def sample(
    denoiser: Denoiser,
    x_T: torch.Tensor,
    num_steps: int,
    *,
    cond: Any = None,
    guidance: Any = None,
    generator: torch.Generator | None = None,  # unused: DPM-Solver++(2M) is deterministic
    callback: Callback | None = None,
    karras_sigmas: bool = False,  # Karras et al. 2022 eq. 5 sigmas (rho = 7) instead of spacing
    timestep_spacing: str = "trailing",  # see common.spaced_timesteps (ignored with karras_sigmas)
    steps_offset: int = 0,  # added to "leading" timesteps
) -> torch.Tensor:
    """x_T (B, ...) ~ N(0, I) -> x_0 (B, ...)."""
    check_x_T(x_T)
    denoiser = resolve_denoiser(denoiser, guidance)
    schedule = denoiser.schedule
    if karras_sigmas:
        grid = karras_grid(schedule, num_steps)
    else:
        grid = timestep_grid(schedule, num_steps, timestep_spacing, steps_offset, integer=True)
    x = x_T
    x0_prev, h_prev = None, math.inf
    for i in range(grid.num_steps):
        t, ab, ab_next = float(grid.t[i]), float(grid.ab[i]), float(grid.ab_next[i])
        x0, _ = denoiser.predict_x0_eps(x, t, cond, ab)
        if callback is not None:
            callback(i, grid.num_steps, t, x, x0)
        alpha_next, sigma, sigma_next = ab_next**0.5, (1 - ab) ** 0.5, (1 - ab_next) ** 0.5
        varsigma = math.inf if ab == 0 else ((1 - ab) / ab) ** 0.5
        varsigma_next = ((1 - ab_next) / ab_next) ** 0.5
        exp_neg_h = varsigma_next / varsigma  # e^{-h}
        h = -math.log(exp_neg_h) if exp_neg_h > 0 else math.inf
        if x0_prev is not None and math.isfinite(h) and math.isfinite(h_prev):
            r = h_prev / h
            d = (1 + 1 / (2 * r)) * x0 - (1 / (2 * r)) * x0_prev
        else:
            d = x0
        x = (sigma_next / sigma) * x - alpha_next * (exp_neg_h - 1) * d
        x0_prev, h_prev = x0, h
    return x
