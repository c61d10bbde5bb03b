"""The training objective: uniform timesteps, MSE on the chosen target, optional min-SNR weighting.

Simple loss (Ho et al. 2020, eq. 14): E_{t, x_0, eps} || target - model(x_t, t) ||^2 with t uniform.
Min-SNR-gamma (Hang et al. 2023, Sec. 3.4 and eq. 8): weight each timestep's loss so that, measured
as an x0-loss, it equals min(SNR(t), gamma). Since the eps-loss equals the x0-loss / SNR and the
v-loss equals the x0-loss / (SNR + 1) (Salimans & Ho 2022), the weight on the model's own target is
  eps: min(SNR, gamma) / SNR,   x0: min(SNR, gamma),   v: min(SNR, gamma) / (SNR + 1).
"""

from __future__ import annotations

import torch

from pictor.diffusion.forward import snr
from pictor.diffusion.parameterization import check_prediction_type, training_target

REDUCTIONS = ("mean", "none")


def sample_timesteps(
    batch_size: int,
    num_timesteps: int,
    *,
    generator: torch.Generator | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """t ~ Uniform{0, .., T-1}: LongTensor (B,), drawn on the CPU (CPU generator), then moved."""
    if batch_size < 1 or num_timesteps < 1:
        raise ValueError(
            f"need batch_size >= 1 and num_timesteps >= 1, got {batch_size}, {num_timesteps}"
        )
    t = torch.randint(0, num_timesteps, (batch_size,), generator=generator, device="cpu")
    return t.to(device) if device is not None else t


def min_snr_weight(snr: torch.Tensor, gamma: float, prediction_type: str) -> torch.Tensor:
    """Hang et al. 2023 loss weight per sample, (B,) -> (B,)."""
    check_prediction_type(prediction_type)
    if gamma <= 0:
        raise ValueError(f"min_snr_gamma must be > 0 (5.0 is the paper's choice), got {gamma}")
    if prediction_type == "eps":
        # min(snr, gamma) / snr written as min(gamma / snr, 1): finite (=1) at snr = 0
        return (gamma / snr).clamp(max=1.0)
    if prediction_type == "x0":
        return snr.clamp(max=gamma)
    return snr.clamp(max=gamma) / (snr + 1)


def diffusion_loss(
    model_pred: torch.Tensor,
    x0: torch.Tensor,
    noise: torch.Tensor,
    t: torch.Tensor,
    alphas_cumprod: torch.Tensor,
    prediction_type: str,
    min_snr_gamma: float | None = None,
    reduction: str = "mean",
) -> torch.Tensor:
    """Weighted MSE between model_pred (B, ...) and the target for x0, noise at integer t (B,).

    reduction "mean" -> scalar, "none" -> (B,) per-sample losses (already weighted).
    """
    if reduction not in REDUCTIONS:
        raise ValueError(f"unknown reduction {reduction!r}; choose one of {REDUCTIONS}")
    if model_pred.shape != x0.shape:
        raise ValueError(
            f"model_pred shape {tuple(model_pred.shape)} != x0 shape {tuple(x0.shape)}"
        )
    ab = alphas_cumprod.to(t.device)[t]  # (B,) float64
    ab_b = ab.reshape(-1, *([1] * (x0.ndim - 1)))
    target = training_target(prediction_type, x0, noise, ab_b)
    dtype = torch.promote_types(model_pred.dtype, torch.float32)  # half precision -> float32
    per_sample = (model_pred.to(dtype) - target.to(dtype)).pow(2).flatten(1).mean(dim=1)  # (B,)
    if min_snr_gamma is not None:
        weight = min_snr_weight(snr(alphas_cumprod, t), min_snr_gamma, prediction_type)
        per_sample = per_sample * weight.to(per_sample)
    return per_sample.mean() if reduction == "mean" else per_sample


def stable_target(
    x_t: torch.Tensor, references: torch.Tensor, alpha_bar_t: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Stable Target Field (Xu et al. 2023, eq. 6): lower-variance regression targets.

    The plain target uses the one x0 that made x_t. At high noise x_t says little about which x0
    that was, so the target is mostly noise around E[x0 | x_t, c]; the model must average it out
    over many steps. STF replaces x0 by the posterior mean of x0 given x_t when x0 is one of K
    references (drawn from the same condition, the first being the x0 that made x_t):

        w_j = softmax_j(-|| x_t - sqrt(ab) x0_j ||^2 / (2 (1 - ab))),   x0_bar = sum_j w_j x0_j

    which is the exact denoiser of the K-point empirical distribution. At low noise the weights
    collapse onto the true x0 (the plain target); at high noise they spread and the target becomes
    the references' mean. eps_bar = (x_t - sqrt(ab) x0_bar) / sqrt(1 - ab) is the matching noise,
    so `training_target(kind, x0_bar, eps_bar, ab)` gives the STF target of every parameterisation.

    x_t (B, ...), references (B, K, ...), alpha_bar_t (B,) -> (x0_bar, eps_bar), each like x_t.
    """
    if references.ndim != x_t.ndim + 1 or references.shape[0] != x_t.shape[0] \
            or references.shape[2:] != x_t.shape[1:]:
        raise ValueError(f"references must be (B, K, ...) for x_t {tuple(x_t.shape)}, got "
                         f"{tuple(references.shape)}")
    ab = alpha_bar_t.to(torch.float64)
    a, s2 = ab.sqrt(), (1.0 - ab)
    view = (-1, *([1] * (x_t.ndim - 1)))
    d2 = (x_t.unsqueeze(1).double() - a.reshape(-1, 1, *view[1:]) * references.double()
          ).pow(2).flatten(2).sum(dim=2)                                    # (B, K)
    w = torch.softmax(-d2 / (2.0 * s2.reshape(-1, 1)), dim=1)               # (B, K)
    x0_bar = (w.reshape(*w.shape, *([1] * (x_t.ndim - 1))) * references.double()).sum(dim=1)
    eps_bar = (x_t.double() - a.reshape(view) * x0_bar) / s2.sqrt().reshape(view)
    return x0_bar.to(x_t.dtype), eps_bar.to(x_t.dtype)


def nft_loss(
    pred: torch.Tensor,
    pred_old: torch.Tensor,
    target: torch.Tensor,
    optimality: torch.Tensor,
    beta: float,
) -> torch.Tensor:
    """DiffusionNFT's negative-aware objective (Zheng et al. 2025, "DiffusionNFT: Online Diffusion
    Reinforcement with Forward Process", eq. 8), per sample.

    Samples x0 of the old policy (the sampling weights, held fixed for a round) are noised by
    the forward process as in pretraining; r in [0, 1] is how likely each sample is "good"
    (its optimality probability, from its reward). Two implicit policies are formed from the
    trainable prediction f and the old one f_old,

        f+ = (1 - beta) f_old + beta f,        f- = (1 + beta) f_old - beta f,

    and the loss is  r || f+ - target ||^2 + (1 - r) || f- - target ||^2: the positive policy
    regresses on the good samples, the negative one on the bad ones, so f moves towards the
    first and away from the second. At f = f_old the gradient is 2 beta (2r - 1)(f_old - target):
    plain regression on good samples, its mirror image on bad ones, nothing where r = 1/2 (a
    group whose samples all score the same). f, f_old and target are any one parameterisation
    (eps, x0 or v): the objective is linear-Gaussian in each alike.

    pred, pred_old, target: (B, ...); optimality: (B,) in [0, 1]; beta > 0. -> (B,) losses.
    """
    if not beta > 0:
        raise ValueError(f"beta must be > 0 (DiffusionNFT uses ~0.1 to 1), got {beta}")
    if pred.shape != pred_old.shape or pred.shape != target.shape:
        raise ValueError(f"pred {tuple(pred.shape)}, pred_old {tuple(pred_old.shape)} and target "
                         f"{tuple(target.shape)} must have one shape")
    dtype = torch.promote_types(pred.dtype, torch.float32)
    pred, pred_old, target = pred.to(dtype), pred_old.to(dtype), target.to(dtype)
    positive = (1.0 - beta) * pred_old + beta * pred
    negative = (1.0 + beta) * pred_old - beta * pred
    pos_err = (positive - target).pow(2).flatten(1).mean(dim=1)            # (B,)
    neg_err = (negative - target).pow(2).flatten(1).mean(dim=1)            # (B,)
    r = optimality.to(dtype)
    return r * pos_err + (1.0 - r) * neg_err
