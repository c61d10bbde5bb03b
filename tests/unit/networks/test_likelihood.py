"""The VAE's maths against closed forms: the KL between diagonal Gaussians (by hand and by
torch.distributions), the discretised Gaussian likelihood of 8-bit pixels (by hand with erf;
its 256 probabilities sum to 1), and the ELBO in bits/dim on a tiny Gaussian case; the network's
ELBO terms assembled from its own encoder, prior and decoder."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from pictor.networks.cvae import ConditionalVAE, VaeConfig
from pictor.networks.likelihood import (
    bits_per_dim,
    discretized_gaussian_log_likelihood,
    gaussian_kl,
)


def phi(v: float) -> float:
    return 0.5 * (1 + math.erf(v / math.sqrt(2)))


def test_kl_closed_form_by_hand():
    # KL(N(1, 4) || N(0, 1)) = 0.5 (log 1 - log 4 + 4 + 1 - 1) = 0.5 (4 - log 4)
    kl = gaussian_kl(torch.tensor(1.0), torch.tensor(math.log(4.0)), torch.tensor(0.0),
                     torch.tensor(0.0))
    assert math.isclose(float(kl), 0.5 * (4 - math.log(4)), rel_tol=1e-6)
    # identical Gaussians: 0
    assert float(gaussian_kl(torch.tensor(0.3), torch.tensor(-1.0), torch.tensor(0.3),
                             torch.tensor(-1.0))) == 0.0


def test_kl_matches_torch_distributions():
    gen = torch.Generator().manual_seed(0)
    m1, m2 = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    l1, l2 = torch.randn(5, 7, generator=gen), torch.randn(5, 7, generator=gen)
    ours = gaussian_kl(m1.double(), l1.double(), m2.double(), l2.double())
    ref = kl_divergence(Normal(m1.double(), (0.5 * l1.double()).exp()),
                        Normal(m2.double(), (0.5 * l2.double()).exp()))
    assert torch.allclose(ours, ref, rtol=1e-10, atol=1e-12)


def test_discretized_gaussian_by_hand_inner_and_edge_bins():
    mean, log_scale = 0.1, math.log(0.2)
    sigma = 0.2
    for k in (0, 37, 128, 255):
        x = k / 127.5 - 1
        if k == 0:
            p = phi((x + 1 / 255 - mean) / sigma)
        elif k == 255:
            p = 1 - phi((x - 1 / 255 - mean) / sigma)
        else:
            p = phi((x + 1 / 255 - mean) / sigma) - phi((x - 1 / 255 - mean) / sigma)
        got = discretized_gaussian_log_likelihood(torch.tensor([x], dtype=torch.float64),
                                                  torch.tensor([mean], dtype=torch.float64),
                                                  torch.tensor([log_scale],
                                                               dtype=torch.float64))
        assert math.isclose(float(got), math.log(p), rel_tol=1e-9), k


@pytest.mark.parametrize("mean,sigma", [(0.0, 0.3), (-0.7, 0.05), (0.98, 0.5)])
def test_discretized_probabilities_sum_to_one(mean, sigma):
    x = torch.arange(256, dtype=torch.float64) / 127.5 - 1
    logp = discretized_gaussian_log_likelihood(x, torch.full_like(x, mean),
                                               torch.full_like(x, math.log(sigma)))
    assert math.isclose(float(logp.exp().sum()), 1.0, rel_tol=1e-9)


def test_elbo_bits_per_dim_on_a_tiny_gaussian_case():
    """Three pixel values, a one-dimensional latent: the negative ELBO by hand, in bits/dim."""
    x = [-1.0, 2 / 127.5 - 1, 1.0]                     # k = 0, 2, 255
    mean, sigma = [-0.9, 0.0, 0.8], 0.25
    mq, vq, mp, vp = 0.5, 0.25, 0.0, 1.0
    ll = (math.log(phi((x[0] + 1 / 255 - mean[0]) / sigma))
          + math.log(phi((x[1] + 1 / 255 - mean[1]) / sigma)
                     - phi((x[1] - 1 / 255 - mean[1]) / sigma))
          + math.log(1 - phi((x[2] - 1 / 255 - mean[2]) / sigma)))
    kl = 0.5 * (math.log(vp / vq) + (vq + (mq - mp) ** 2) / vp - 1)
    by_hand = (kl - ll) / (3 * math.log(2))
    t = lambda v: torch.tensor(v, dtype=torch.float64)  # noqa: E731
    ours_ll = discretized_gaussian_log_likelihood(t(x), t(mean),
                                                  t([math.log(sigma)] * 3)).sum()
    ours_kl = gaussian_kl(t(mq), t(math.log(vq)), t(mp), t(math.log(vp)))
    assert math.isclose(float(bits_per_dim(ours_kl - ours_ll, 3)), by_hand, rel_tol=1e-9)


def test_network_elbo_terms_are_its_parts():
    torch.manual_seed(0)
    config = VaeConfig(channels=[8, 8, 4], latent_dim=3, text_dim=5, hidden_dim=8)
    vae = ConditionalVAE(config).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.randint(0, 256, (2, 3, 16, 16), generator=gen).double() / 127.5 - 1
    c = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    eps = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    terms = vae.elbo_terms(x, c, eps)
    mq, lq = vae.encode(x, c)
    mp, lp = vae.prior(c)
    mean = vae.decode(mq + (0.5 * lq).exp() * eps, c)
    sigma = vae.log_scale.exp().view(1, 3, 1, 1)
    normal = Normal(mean, sigma)
    inner = (normal.cdf(x + 1 / 255) - normal.cdf(x - 1 / 255)).log()
    lo, hi = normal.cdf(x + 1 / 255).log(), (1 - normal.cdf(x - 1 / 255)).log()
    ll = torch.where(x < -0.999, lo, torch.where(x > 0.999, hi, inner)).flatten(1).sum(1)
    kl = kl_divergence(Normal(mq, (0.5 * lq).exp()), Normal(mp, (0.5 * lp).exp())).sum(1)
    assert terms.num_dims == 3 * 16 * 16
    assert torch.allclose(terms.log_likelihood, ll, rtol=1e-9)
    assert torch.allclose(terms.kl, kl, rtol=1e-9)
    assert torch.allclose(terms.negative_elbo(0.5), -ll + 0.5 * kl, rtol=1e-9)
