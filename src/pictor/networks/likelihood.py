"""Gaussian KL divergences and discretised likelihoods of 8-bit images, in nats and bits/dim.

Notation: a diagonal Gaussian is (mean, logvar), logvar = log sigma^2, over the last dims of a
tensor. Images live in [-1, 1] on the 8-bit grid x = k / 127.5 - 1, k in {0..255}, so each pixel
value owns a bin of width 2/255 centred on it.

- `gaussian_kl`: KL(N(m1, v1) || N(m2, v2)) per element, the closed form
      0.5 * (log v2 - log v1 + (v1 + (m1 - m2)^2) / v2 - 1)
  (Kingma & Welling 2014, App. B for m2 = 0, v2 = 1).
- `discretized_gaussian_log_likelihood`: log P(x) of a pixel value under a Gaussian integrated
  over its bin, with the edge bins reaching to -inf / +inf so the 256 probabilities sum to 1
  (Ho et al. 2020, Sec. 3.3 eq. 13, and their `discretized_gaussian_log_likelihood`; PixelCNN++,
  Salimans et al. 2017, does the same with a logistic).
- `bits_per_dim`: a negative log-likelihood (or -ELBO) in nats over D dimensions, as
  nll / (D ln 2): the unit density models report on 8-bit images.
"""

from __future__ import annotations

import math

import torch

BIN_HALF_WIDTH = 1.0 / 255.0  # half of a pixel bin 2/255 in [-1, 1]
EDGE = 0.999  # values beyond +-EDGE are the extreme pixel values -1 and 1 (k = 0 or 255)


def gaussian_kl(mean1: torch.Tensor, logvar1: torch.Tensor, mean2: torch.Tensor,
                logvar2: torch.Tensor) -> torch.Tensor:
    """KL(N(mean1, exp logvar1) || N(mean2, exp logvar2)) per element (nats), broadcasting."""
    return 0.5 * (logvar2 - logvar1 + (logvar1.exp() + (mean1 - mean2) ** 2)
                  * torch.exp(-logvar2) - 1.0)


def _std_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.erf(x / math.sqrt(2.0)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor,
                                        log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) per element (nats) for x on the 8-bit grid in [-1, 1] under N(mean, e^log_scale)
    integrated over x's bin [x - 1/255, x + 1/255]; the bins of -1 and 1 extend to -inf and +inf.
    Probabilities are clamped at 1e-12 before the log, as in Ho et al.'s code."""
    centred = x - mean
    inv_std = torch.exp(-log_scale)
    cdf_plus = _std_normal_cdf(inv_std * (centred + BIN_HALF_WIDTH))
    cdf_min = _std_normal_cdf(inv_std * (centred - BIN_HALF_WIDTH))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -EDGE, log_cdf_plus,
                       torch.where(x > EDGE, log_one_minus_cdf_min, log_delta))


def bits_per_dim(nll_nats: torch.Tensor | float, num_dims: int) -> torch.Tensor | float:
    """A negative log-likelihood (or negative ELBO) in nats over num_dims dimensions, in
    bits per dimension."""
    return nll_nats / (num_dims * math.log(2.0))
