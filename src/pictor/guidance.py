"""Classifier-free guidance (Ho & Salimans 2022), negative prompts, guidance rescale, thresholding.

CFG (Ho & Salimans 2022, eq. 6, written with scale w = 1 + their w):
    pred = pred_uncond + w (pred_cond - pred_uncond)
w = 1 gives the conditional prediction, w = 0 the unconditional one. A negative prompt is simply
the conditioning used in place of the empty prompt's: pass its encoding as `uncond`. Because the
conversions between eps, x0 and v are affine in the prediction with coefficients summing to one,
the combination is the same in every parameterization.

Guidance rescale (Lin et al. 2024, Sec. 3.4, eqs. 15-16), on the raw model output as in their
algorithm and in diffusers:
    pred_rescaled = pred_cfg * std(pred_cond) / std(pred_cfg)
    pred_final    = phi pred_rescaled + (1 - phi) pred_cfg
Dynamic thresholding (Saharia et al. 2022, Imagen, Sec. 2.3), for pixel-space models: per sample,
s = max(percentile_p(|x0_hat|), 1), x0_hat <- clip(x0_hat, -s, s) / s; eps_hat is re-derived from
the thresholded x0_hat (the Denoiser's x0_transform).

Both halves run in one batched forward pass: x (2B, ...), t (2B,), cond = concat(cond, uncond).

Guidance interval (Kynkaenniemi et al. 2024): guidance only where the noise level
sigma = sqrt((1 - ab_t) / ab_t) lies in [sigma_lo, sigma_hi]; elsewhere the conditional
prediction alone, which costs one forward pass of batch B instead of 2B. Outside the interval
the output equals scale 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from pictor.diffusion.denoiser import Denoiser


@dataclass
class CFG:
    scale: float = 5.0  # w; 1 = conditional only, 0 = unconditional only
    uncond: Any = None  # conditioning of the empty or negative prompt
    rescale: float = 0.0  # phi in [0, 1] of Lin et al. 2024 (0.7 suggested)
    dynamic_threshold: float | None = None  # Imagen percentile p in (0, 1], e.g. 0.995; None = off
    # (sigma_lo, sigma_hi), sigma_hi None = no upper bound; None = guide every step
    interval: tuple[float, float | None] | None = None

    def __post_init__(self) -> None:
        if self.interval is not None:
            lo, hi = float(self.interval[0]), self.interval[1]
            hi = float("inf") if hi is None else float(hi)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo <= "
                                 f"sigma_hi, got {self.interval}")
            self.interval = (lo, hi)
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"rescale (phi) must lie in [0, 1], got {self.rescale}")
        if self.dynamic_threshold is not None and not 0.0 < self.dynamic_threshold <= 1.0:
            raise ValueError(
                f"dynamic_threshold is a percentile in (0, 1] (e.g. 0.995), "
                f"got {self.dynamic_threshold}"
            )

    def apply(self, denoiser: Denoiser) -> Denoiser:
        """The guided denoiser (what every sampler calls when given guidance=self)."""
        return guided_model(denoiser, self)


def concat_conds(a: Any, b: Any) -> Any:
    """Concatenate two conditioning objects along the batch: tensors on dim 0, dicts key by key,
    lists/tuples item by item, None with None. Tensors must agree beyond the batch dimension."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"cannot batch cond {tuple(a.shape)} with uncond {tuple(b.shape)}: "
                "encode both to the "
                "same length (e.g. pad both to the text encoder's max_length)"
            )
        return torch.cat([a, b.to(device=a.device, dtype=a.dtype)], dim=0)
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise ValueError(f"cond keys {sorted(a)} differ from uncond keys {sorted(b)}")
        return {k: concat_conds(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(concat_conds(x, y) for x, y in zip(a, b, strict=True))
    raise ValueError(
        f"cannot batch cond of type {type(a).__name__} with uncond of type {type(b).__name__}; "
        "pass tensors, dicts of tensors, or None for both"
    )


def expand_cond(cond: Any, batch_size: int) -> Any:
    """Repeat a batch-1 conditioning (e.g. one encoded empty prompt) to batch_size."""
    if isinstance(cond, torch.Tensor):
        if cond.shape[0] == batch_size:
            return cond
        if cond.shape[0] != 1:
            raise ValueError(
                f"uncond batch {cond.shape[0]} must be 1 or equal to the batch {batch_size}"
            )
        return cond.expand(batch_size, *cond.shape[1:])
    if isinstance(cond, dict):
        return {k: expand_cond(v, batch_size) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(expand_cond(v, batch_size) for v in cond)
    return cond


def combine(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """pred_uncond + scale (pred_cond - pred_uncond)."""
    return pred_uncond + scale * (pred_cond - pred_uncond)


def rescale_guidance(pred_cfg: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024 eqs. 15-16; std over all but the batch dimension. (B, ...) -> (B, ...)."""
    dims = list(range(1, pred_cfg.ndim))
    rescaled = pred_cfg * (
        pred_cond.std(dim=dims, keepdim=True) / pred_cfg.std(dim=dims, keepdim=True)
    )
    return phi * rescaled + (1 - phi) * pred_cfg


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen dynamic thresholding: s = max(quantile_p |x0|, 1) per sample; clip to [-s, s], / s."""
    flat = x0.reshape(x0.shape[0], -1)  # (B, D)
    dtype = torch.promote_types(x0.dtype, torch.float32)  # quantile needs float32 or float64
    s = torch.quantile(flat.abs().to(dtype), percentile, dim=1).clamp(min=1.0)  # (B,)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _inside(t: torch.Tensor, interval: tuple[float, float], schedule) -> bool:
    """Whether the noise level of timestep(s) t (B,) lies in [sigma_lo, sigma_hi] (the whole batch
    shares one step; a batch that straddles a bound counts as inside)."""
    ab = schedule.alpha_bar_at(t.detach().double().cpu())
    sigma = ((1 - ab) / ab).sqrt()  # inf where ab = 0 (zero terminal SNR)
    return bool(((sigma >= interval[0]) & (sigma <= interval[1])).any())


def guided_model(denoiser: Denoiser, guidance: CFG) -> Denoiser:
    """A Denoiser whose output is the (rescaled) CFG combination, x0 optionally thresholded."""
    base = denoiser.model
    scale, uncond, phi = float(guidance.scale), guidance.uncond, float(guidance.rescale)
    interval = guidance.interval

    if scale == 1.0:
        model = base  # conditional only: the uncond half would get weight 0
    elif uncond is None:
        raise ValueError(
            "classifier-free guidance with scale != 1 needs CFG.uncond: encode the empty prompt "
            "(or a negative prompt) with the same text encoder and pass it as uncond"
        )
    elif scale == 0.0:

        def model(x_t, t, cond):  # unconditional only
            return base(x_t, t, expand_cond(uncond, x_t.shape[0]))
    else:

        def model(x_t, t, cond):  # x_t (B, ...), t (B,)
            batch_size = x_t.shape[0]
            if interval is not None and not _inside(t, interval, denoiser.schedule):
                return base(x_t, t, cond)
            both = base(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                concat_conds(cond, expand_cond(uncond, batch_size)),
            )  # (2B, ...)
            pred_cond, pred_uncond = both[:batch_size], both[batch_size:]
            pred = combine(pred_cond, pred_uncond, scale)
            return rescale_guidance(pred, pred_cond, phi) if phi > 0 else pred

    x0_transform = denoiser.x0_transform
    if guidance.dynamic_threshold is not None:
        percentile, inner = float(guidance.dynamic_threshold), denoiser.x0_transform

        def x0_transform(x0):
            return dynamic_threshold(inner(x0) if inner is not None else x0, percentile)

    return Denoiser(
        model=model,
        schedule=denoiser.schedule,
        prediction_type=denoiser.prediction_type,
        x0_transform=x0_transform,
    )
