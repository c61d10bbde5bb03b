"""Noise schedules: betas and alpha_bar as pure float64 functions.

Notation (Ho et al. 2020, Sec. 2), with integer timesteps t = 0 .. T-1 (index i stands for the
paper's t = i + 1):

| paper                          | here                      |
|--------------------------------|---------------------------|
| beta_t                         | `betas[t]`                |
| alpha_t = 1 - beta_t           | `1 - betas[t]`            |
| alpha_bar_t = prod_s alpha_s   | `alphas_cumprod[t]`       |
| SNR(t) = ab / (1 - ab)         | `snr(t)`                  |
| sigma (VE / Karras et al.)     | `sigmas[t]` = sqrt((1 - ab) / ab) |

so that x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps, i.e. x_t / sqrt(ab_t) = x_0 + sigma_t eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from pictor.diffusion.forward import snr as _snr

SCHEDULE_KINDS = ("cosine", "linear", "scaled_linear")
_DEFAULT_BETA_RANGE = {"linear": (1e-4, 2e-2), "scaled_linear": (0.00085, 0.012)}


def _check_num_timesteps(num_timesteps: int) -> None:
    if not isinstance(num_timesteps, int) or num_timesteps < 2:
        raise ValueError(f"num_timesteps must be an int >= 2, got {num_timesteps!r}")


def _check_beta_range(beta_start: float, beta_end: float) -> None:
    if not 0.0 < beta_start <= beta_end < 1.0:
        raise ValueError(
            f"need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, beta_end={beta_end}"
        )


def linear_betas(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 2e-2
) -> torch.Tensor:
    """beta_t linear in t (Ho et al. 2020, Sec. 4). Returns float64 (T,)."""
    _check_num_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start, beta_end, num_timesteps, dtype=torch.float64)


def scaled_linear_betas(
    num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> torch.Tensor:
    """sqrt(beta_t) linear in t: the Stable Diffusion / LDM schedule (Rombach et al. 2022).

    Returns float64 (T,).
    """
    _check_num_timesteps(num_timesteps)
    _check_beta_range(beta_start, beta_end)
    return torch.linspace(beta_start**0.5, beta_end**0.5, num_timesteps, dtype=torch.float64) ** 2


def cosine_betas(num_timesteps: int, s: float = 0.008, max_beta: float = 0.999) -> torch.Tensor:
    """Nichol & Dhariwal 2021, eq. 17: alpha_bar(t) = f(t) / f(0),
    f(t) = cos((t/T + s) / (1 + s) * pi/2)^2.

    beta_t = 1 - alpha_bar(t) / alpha_bar(t - 1), clipped to max_beta (their Sec. 3.2) so that the
    last steps stay finite. Returns float64 (T,).
    """
    _check_num_timesteps(num_timesteps)
    if not 0.0 < max_beta <= 1.0:
        raise ValueError(f"max_beta must be in (0, 1], got {max_beta}")
    steps = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps  # t/T, (T+1,)
    f = torch.cos((steps + s) / (1 + s) * math.pi / 2) ** 2
    return (1 - f[1:] / f[:-1]).clamp(max=max_beta)


def alphas_cumprod_from_betas(betas: torch.Tensor) -> torch.Tensor:
    """alpha_bar_t = prod_{s <= t} (1 - beta_s) (Ho et al. 2020, eq. 4). float64 (T,)."""
    return torch.cumprod(1.0 - betas.to(torch.float64), dim=0)


def rescale_zero_terminal_snr(betas: torch.Tensor) -> torch.Tensor:
    """Lin et al. 2024, Algorithm 1: shift and scale sqrt(alpha_bar) so that alpha_bar_T = 0.

    sqrt(ab)' = (sqrt(ab) - sqrt(ab_T)) * sqrt(ab_0) / (sqrt(ab_0) - sqrt(ab_T)): the first value
    is kept, the last becomes exactly 0 (zero terminal SNR), so the final beta is 1.
    """
    sqrt_ab = alphas_cumprod_from_betas(betas).sqrt()
    first, last = sqrt_ab[0].clone(), sqrt_ab[-1].clone()
    sqrt_ab = (sqrt_ab - last) * first / (first - last)
    ab = sqrt_ab**2
    alphas = torch.cat([ab[:1], ab[1:] / ab[:-1]])  # undo the cumulative product
    return 1.0 - alphas


@dataclass(frozen=True)
class ScheduleConfig:
    kind: str = "cosine"  # "cosine" | "linear" | "scaled_linear"
    num_timesteps: int = 1000  # T, the number of training timesteps
    beta_start: float | None = None  # linear kinds only; None = the kind's default (1e-4 / 0.00085)
    beta_end: float | None = None  # linear kinds only; None = the kind's default (2e-2 / 0.012)
    zero_terminal_snr: bool = (
        False  # rescale so alpha_bar_T = 0 (Lin et al. 2024); use v-prediction
    )


class NoiseSchedule:
    """A discrete schedule: `betas`, `alphas_cumprod`, `sigmas` (float64, (T,)), `num_timesteps`."""

    def __init__(self, betas: torch.Tensor):
        betas = torch.as_tensor(betas, dtype=torch.float64).detach().cpu()
        if betas.ndim != 1 or betas.numel() < 2:
            raise ValueError(
                f"betas must be a 1-D tensor of length >= 2, got shape {tuple(betas.shape)}"
            )
        if not bool(((betas > 0) & (betas <= 1)).all()):
            raise ValueError("every beta must lie in (0, 1]")
        self.betas = betas  # (T,)
        self.alphas_cumprod = alphas_cumprod_from_betas(betas)  # (T,)
        self.num_timesteps = int(betas.numel())
        ab = self.alphas_cumprod
        # Computed once: samplers and guidance read them at every step. Do not modify in place.
        self._sigmas = ((1 - ab) / ab).sqrt()
        self._log_sigmas = self._sigmas.log()

    @classmethod
    def from_config(cls, config: ScheduleConfig) -> NoiseSchedule:
        if config.kind not in SCHEDULE_KINDS:
            raise ValueError(
                f"unknown schedule kind {config.kind!r}; choose one of {SCHEDULE_KINDS}"
            )
        if config.kind == "cosine":
            if config.beta_start is not None or config.beta_end is not None:
                raise ValueError(
                    "beta_start/beta_end apply only to the linear kinds; "
                    "leave them unset for cosine"
                )
            betas = cosine_betas(config.num_timesteps)
        else:
            start, end = _DEFAULT_BETA_RANGE[config.kind]
            start = start if config.beta_start is None else config.beta_start
            end = end if config.beta_end is None else config.beta_end
            make = linear_betas if config.kind == "linear" else scaled_linear_betas
            betas = make(config.num_timesteps, start, end)
        if config.zero_terminal_snr:
            betas = rescale_zero_terminal_snr(betas)
        return cls(betas)

    @property
    def sigmas(self) -> torch.Tensor:
        """Karras/VE noise level sigma_t = sqrt((1 - ab_t) / ab_t), float64 (T,); inf at ab = 0.
        The schedule's own tensor: do not modify it in place."""
        return self._sigmas

    @property
    def log_sigmas(self) -> torch.Tensor:
        """log sigma_t, float64 (T,); +inf at ab = 0. Do not modify it in place."""
        return self._log_sigmas

    def snr(self, t: torch.Tensor) -> torch.Tensor:
        """SNR(t) = ab_t / (1 - ab_t) for integer timesteps t (B,)."""
        return _snr(self.alphas_cumprod, t)

    def alpha_bar_at(self, t: torch.Tensor | float) -> torch.Tensor:
        """alpha_bar at possibly fractional timesteps t, float64, same shape as t.

        Between integer steps log sigma is interpolated linearly (k-diffusion's
        DiscreteSchedule.t_to_sigma), the exact inverse of samplers.common.sigma_to_t; then
        alpha_bar = 1 / (1 + sigma^2). Integer t index the table exactly.
        """
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if bool(((t < 0) | (t > self.num_timesteps - 1)).any()):
            raise ValueError(
                f"timesteps must lie in [0, {self.num_timesteps - 1}], got {t.tolist()}"
            )
        low = t.floor().long().clamp(max=self.num_timesteps - 2)
        w = t - low  # in [0, 1]
        ab, log_sigmas = self.alphas_cumprod, self.log_sigmas
        log_sigma = log_sigmas[low] + w * (log_sigmas[low + 1] - log_sigmas[low])
        between = 1.0 / (1.0 + (2 * log_sigma).exp())
        # at w = 0 or 1 take the stored value itself (exact, and no 0 * inf when sigma_T = inf).
        return torch.where(w == 0, ab[low], torch.where(w == 1, ab[low + 1], between))
