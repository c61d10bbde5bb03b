"""What the network predicts: eps, x0 or v, and the exact conversions between them.

With x_t = a x_0 + s eps, a = sqrt(ab_t), s = sqrt(1 - ab_t) (so a^2 + s^2 = 1):
- eps-prediction: the noise eps (Ho et al. 2020, eq. 11);
- x0-prediction: the clean sample x_0;
- v-prediction: v = a eps - s x_0 (Salimans & Ho 2022, Sec. 4 and App. D), which gives
  x_0 = a x_t - s v and eps = a v + s x_t, valid for every ab_t in [0, 1] (also at zero SNR).

`alpha_bar_t` is anything broadcastable to x: a float, a 0-d tensor or (B, 1, ..., 1).
"""

from __future__ import annotations

import torch

PREDICTION_TYPES = ("eps", "x0", "v")


def check_prediction_type(prediction_type: str) -> str:
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(
            f"unknown prediction_type {prediction_type!r}; choose one of {PREDICTION_TYPES}"
        )
    return prediction_type


def _coefficients(alpha_bar_t, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    ab = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    return (
        ab.sqrt().to(device=like.device, dtype=like.dtype),
        (1 - ab).sqrt().to(device=like.device, dtype=like.dtype),
    )


def training_target(
    prediction_type: str, x0: torch.Tensor, noise: torch.Tensor, alpha_bar_t
) -> torch.Tensor:
    """The regression target for a network of this prediction type. (B, ...) -> (B, ...)."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return noise
    if prediction_type == "x0":
        return x0
    a, s = _coefficients(alpha_bar_t, x0)
    return a * noise - s * x0


def to_x0(prediction_type: str, pred: torch.Tensor, x_t: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    """x_0 implied by `pred` at x_t. eps-prediction divides by sqrt(ab_t): undefined at ab_t = 0."""
    check_prediction_type(prediction_type)
    if prediction_type == "x0":
        return pred
    a, s = _coefficients(alpha_bar_t, x_t)
    if prediction_type == "eps":
        return (x_t - s * pred) / a
    return a * x_t - s * pred


def to_eps(
    prediction_type: str, pred: torch.Tensor, x_t: torch.Tensor, alpha_bar_t
) -> torch.Tensor:
    """eps implied by `pred` at x_t. For x0-prediction this divides by sqrt(1 - ab_t)."""
    check_prediction_type(prediction_type)
    if prediction_type == "eps":
        return pred
    a, s = _coefficients(alpha_bar_t, x_t)
    if prediction_type == "x0":
        return (x_t - a * pred) / s
    return a * pred + s * x_t


def to_v(prediction_type: str, pred: torch.Tensor, x_t: torch.Tensor, alpha_bar_t) -> torch.Tensor:
    """v = sqrt(ab) eps - sqrt(1 - ab) x_0 implied by `pred` at x_t."""
    check_prediction_type(prediction_type)
    if prediction_type == "v":
        return pred
    a, s = _coefficients(alpha_bar_t, x_t)
    if prediction_type == "eps":
        # x_0 = (x_t - s eps) / a  =>  v = a eps - s x_0 = (eps - s x_t) / a
        return (pred - s * x_t) / a
    # eps = (x_t - a x_0) / s  =>  v = a eps - s x_0 = (a x_t - x_0) / s
    return (a * x_t - pred) / s
