"""The forward (noising) process q(x_t | x_0) and the signal-to-noise ratio.

Ho et al. 2020, eq. 4: q(x_t | x_0) = N(sqrt(ab_t) x_0, (1 - ab_t) I), sampled by
x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps with eps ~ N(0, I).
Kingma et al. 2021, eq. 2: SNR(t) = ab_t / (1 - ab_t).
"""

from __future__ import annotations

import torch


def broadcast_to(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(B,) per-sample values -> (B, 1, ..., 1) on x's device and dtype, to broadcast against x."""
    values = torch.as_tensor(values).to(device=x.device, dtype=x.dtype)
    if values.ndim == 0:
        return values
    return values.reshape(values.shape[0], *([1] * (x.ndim - 1)))


def _gather(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t)
    if t.dtype.is_floating_point or t.dtype == torch.bool:
        raise ValueError(f"t must be an integer tensor of timestep indices, got dtype {t.dtype}")
    return alphas_cumprod.to(t.device)[t]


def q_sample(
    x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor, alphas_cumprod: torch.Tensor
) -> torch.Tensor:
    """x_t = sqrt(ab_t) x_0 + sqrt(1 - ab_t) eps (Ho et al. 2020, eq. 4).

    x0, noise: (B, ...); t: LongTensor (B,); alphas_cumprod: (T,).
    Returns x_t (B, ...) in x0's dtype.
    """
    if noise.shape != x0.shape:
        raise ValueError(f"noise shape {tuple(noise.shape)} must equal x0 shape {tuple(x0.shape)}")
    ab = _gather(alphas_cumprod, t)  # (B,) float64
    return broadcast_to(ab.sqrt(), x0) * x0 + broadcast_to((1 - ab).sqrt(), x0) * noise


def snr(alphas_cumprod: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """SNR(t) = ab_t / (1 - ab_t) for integer t (B,); float64 (B,) on t's device."""
    ab = _gather(alphas_cumprod, t)
    return ab / (1 - ab)
