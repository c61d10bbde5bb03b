"""Training loss: uniform timesteps, MSE on the target, min-SNR-gamma (Hang et al. 2023)."""

from __future__ import annotations

import pytest
import torch

from pictor.diffusion.forward import q_sample, snr
from pictor.diffusion.losses import (
    diffusion_loss,
    min_snr_weight,
    sample_timesteps,
    stable_target,
)
from pictor.diffusion.parameterization import PREDICTION_TYPES, to_x0, training_target
from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_config(ScheduleConfig("linear", zero_terminal_snr=True))


def test_sample_timesteps():
    t = sample_timesteps(5000, 1000, generator=torch.Generator().manual_seed(0))
    assert t.dtype == torch.long and t.shape == (5000,)
    assert int(t.min()) >= 0 and int(t.max()) <= 999
    assert abs(t.double().mean().item() - 499.5) < 15  # uniform: mean 499.5, sd of mean ~4
    again = sample_timesteps(5000, 1000, generator=torch.Generator().manual_seed(0))
    assert torch.equal(t, again)
    with pytest.raises(ValueError):
        sample_timesteps(0, 1000)


def test_min_snr_weights_are_the_papers():
    s = torch.tensor([0.0, 0.5, 5.0, 20.0], dtype=torch.float64)
    gamma = 5.0
    clipped = torch.minimum(s, torch.tensor(gamma, dtype=torch.float64))
    assert torch.allclose(min_snr_weight(s, gamma, "x0"), clipped)
    assert torch.allclose(min_snr_weight(s, gamma, "v"), clipped / (s + 1))
    # eps: min(snr, gamma) / snr, with its limit 1 at snr = 0
    assert torch.allclose(
        min_snr_weight(s, gamma, "eps"), torch.tensor([1.0, 1.0, 1.0, 0.25], dtype=torch.float64)
    )
    with pytest.raises(ValueError, match="gamma"):
        min_snr_weight(s, 0.0, "eps")


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_min_snr_loss_equals_clipped_snr_times_x0_loss(schedule, prediction_type):
    """Hang et al. 2023 eq. 8: whatever the parameterization, the weighted loss is
    min(SNR, gamma) * || x0_hat - x0 ||^2 (x0_hat read from the prediction at the same x_t)."""
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    noise = torch.randn(16, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.randint(0, 999, (16,), generator=g)  # below T-1, where eps still determines x0
    ab = schedule.alphas_cumprod[t].reshape(16, 1, 1, 1)
    x_t = q_sample(x0, t, noise, schedule.alphas_cumprod)
    pred = training_target(prediction_type, x0, noise, ab) + 0.1 * torch.randn(
        16, 3, 4, 4, generator=g, dtype=torch.float64
    )
    loss = diffusion_loss(
        pred, x0, noise, t, schedule.alphas_cumprod, prediction_type, 5.0, reduction="none"
    )
    x0_loss = (to_x0(prediction_type, pred, x_t, ab) - x0).pow(2).flatten(1).mean(1)
    expected = snr(schedule.alphas_cumprod, t).clamp(max=5.0) * x0_loss
    assert torch.allclose(loss.double(), expected, rtol=1e-5)


def test_plain_loss_and_reductions(schedule):
    g = torch.Generator().manual_seed(1)
    x0, noise, pred = (torch.randn(4, 2, 3, generator=g) for _ in range(3))
    t = torch.tensor([0, 10, 500, 999])  # including the zero-SNR step: all weights stay finite
    per_sample = diffusion_loss(
        pred, x0, noise, t, schedule.alphas_cumprod, "eps", reduction="none"
    )
    assert torch.allclose(per_sample, (pred - noise).pow(2).flatten(1).mean(1))
    mean = diffusion_loss(pred, x0, noise, t, schedule.alphas_cumprod, "eps")
    assert torch.allclose(mean, per_sample.mean())
    for prediction_type in PREDICTION_TYPES:
        weighted = diffusion_loss(pred, x0, noise, t, schedule.alphas_cumprod, prediction_type, 5.0)
        assert torch.isfinite(weighted)
    with pytest.raises(ValueError, match="reduction"):
        diffusion_loss(pred, x0, noise, t, schedule.alphas_cumprod, "eps", reduction="sum")
    with pytest.raises(ValueError, match="shape"):
        diffusion_loss(pred[:, :1], x0, noise, t, schedule.alphas_cumprod, "eps")


def test_stable_target_is_the_posterior_mean_over_the_references():
    """STF (Xu et al. 2023): x0_bar = E[x0 | x_t] when x0 is uniform over the K references,
    computed here independently with Normal log-densities; eps_bar matches x_t exactly."""
    g = torch.Generator().manual_seed(0)
    b, k = 6, 5
    refs = torch.randn((b, k, 3, 2, 2), generator=g, dtype=torch.float64)
    ab = torch.tensor([0.999, 0.9, 0.5, 0.1, 0.01, 1e-6], dtype=torch.float64)
    x_t = q_sample(refs[:, 0], torch.arange(b), torch.randn((b, 3, 2, 2), generator=g,
                                                            dtype=torch.float64), ab)
    x0_bar, eps_bar = stable_target(x_t, refs, ab)
    for i in range(b):
        dist = torch.distributions.Normal(ab[i].sqrt() * refs[i], (1 - ab[i]).sqrt())
        logp = dist.log_prob(x_t[i].expand_as(refs[i])).flatten(1).sum(1)      # (K,)
        post = torch.softmax(logp, 0)
        expected = (post[:, None, None, None] * refs[i]).sum(0)
        torch.testing.assert_close(x0_bar[i], expected, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(ab.sqrt()[:, None, None, None] * x0_bar
                               + (1 - ab).sqrt()[:, None, None, None] * eps_bar, x_t)


def test_stable_target_limits():
    """Low noise: the true x0 and noise (the plain target). No signal left: the references'
    mean. K copies of x0: the plain target at every noise level."""
    g = torch.Generator().manual_seed(1)
    refs = torch.randn((4, 8, 4, 4, 4), generator=g)
    noise = torch.randn((4, 4, 4, 4), generator=g)
    low = torch.full((4,), 1 - 1e-5, dtype=torch.float64)
    x_t = q_sample(refs[:, 0], torch.arange(4), noise, low)
    x0_bar, eps_bar = stable_target(x_t, refs, low)
    torch.testing.assert_close(x0_bar, refs[:, 0])
    torch.testing.assert_close(eps_bar, noise, rtol=1e-3, atol=1e-3)
    none = torch.full((4,), 1e-12, dtype=torch.float64)
    x0_bar, _ = stable_target(q_sample(refs[:, 0], torch.arange(4), noise, none), refs, none)
    torch.testing.assert_close(x0_bar, refs.mean(dim=1))
    same = refs[:, :1].expand(-1, 8, -1, -1, -1)
    for ab in (0.99, 0.5, 0.02):
        abt = torch.full((4,), ab, dtype=torch.float64)
        x_t = q_sample(refs[:, 0], torch.arange(4), noise, abt)
        x0_bar, eps_bar = stable_target(x_t, same, abt)
        torch.testing.assert_close(x0_bar, refs[:, 0])
        torch.testing.assert_close(eps_bar, noise, rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match="references must be"):
        stable_target(x_t, refs[:, 0], abt)


# ---------------------------------------------------------------------------------------------
# DiffusionNFT's objective (Zheng et al. 2025, eq. 8)
# ---------------------------------------------------------------------------------------------
def _nft_case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    pred, old, target = (torch.randn(6, 2, 3, 3, generator=g, dtype=torch.float64)
                         for _ in range(3))
    return pred, old, target


def test_nft_loss_closed_forms():
    from pictor.diffusion.losses import nft_loss

    pred, old, target = _nft_case()
    ones, zeros = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    mse = lambda a, b: (a - b).pow(2).flatten(1).mean(1)  # noqa: E731
    # beta = 1: the positive policy is the model itself, the negative its mirror through f_old
    torch.testing.assert_close(nft_loss(pred, old, target, ones, 1.0), mse(pred, target))
    torch.testing.assert_close(nft_loss(pred, old, target, zeros, 1.0),
                               mse(2 * old - pred, target))
    # any beta: r mixes the two terms linearly
    r = torch.linspace(0, 1, 6, dtype=torch.float64)
    beta = 0.3
    pos = mse((1 - beta) * old + beta * pred, target)
    neg = mse((1 + beta) * old - beta * pred, target)
    torch.testing.assert_close(nft_loss(pred, old, target, r, beta), r * pos + (1 - r) * neg)
    # at f = f_old both implicit policies are f_old: the loss is the old policy's error
    torch.testing.assert_close(nft_loss(old, old, target, r, beta), mse(old, target))


def test_nft_loss_gradient_at_the_old_policy_pulls_to_positives_and_pushes_from_negatives():
    from pictor.diffusion.losses import nft_loss

    _, old, target = _nft_case(1)
    beta = 0.7
    r = torch.tensor([1.0, 0.0, 0.5, 0.9, 0.2, 0.5], dtype=torch.float64)
    pred = old.clone().requires_grad_(True)
    nft_loss(pred, old, target, r, beta).sum().backward()
    n = old[0].numel()
    expected = 2 * beta * (2 * r - 1).reshape(-1, 1, 1, 1) * (old - target) / n
    torch.testing.assert_close(pred.grad, expected)
    # r = 1/2 (a group without preference): no gradient at f_old
    torch.testing.assert_close(pred.grad[[2, 5]], torch.zeros_like(pred.grad[[2, 5]]),
                               atol=1e-15, rtol=0)
    # a gradient step on a positive moves f towards its target, on a negative away from it
    step = old - 10.0 * pred.grad
    assert (step[0] - target[0]).norm() < (old[0] - target[0]).norm()
    assert (step[1] - target[1]).norm() > (old[1] - target[1]).norm()


def test_nft_loss_errors():
    from pictor.diffusion.losses import nft_loss

    pred, old, target = _nft_case()
    r = torch.ones(6)
    with pytest.raises(ValueError, match="beta"):
        nft_loss(pred, old, target, r, 0.0)
    with pytest.raises(ValueError, match="one shape"):
        nft_loss(pred, old[:, :1], target, r, 1.0)
