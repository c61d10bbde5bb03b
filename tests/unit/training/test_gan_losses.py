"""The GAN's losses against closed forms: for a linear discriminator D(x, s) = w.x + u.s the
input gradient is (w, u) everywhere, so MA-GP = k (||w||^2 + ||u||^2)^(p/2) and
R1 = gamma / 2 ||w||^2 exactly; the hinge losses on chosen logits by hand."""

from __future__ import annotations

import math

import pytest
import torch

from pictor.training.gan import condition_weight
from pictor.training.gan_losses import (
    hinge_discriminator_loss,
    hinge_generator_loss,
    input_gradients,
    ma_gp,
    r1_penalty,
)


def linear_critic(w: torch.Tensor, u: torch.Tensor):
    return lambda x, s: (x.flatten(1) * w.flatten()).sum(1) + (s * u).sum(1)


@pytest.fixture
def linear():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(3, 4, 4, generator=gen, dtype=torch.float64)
    u = torch.randn(5, generator=gen, dtype=torch.float64)
    x = torch.randn(6, 3, 4, 4, generator=gen, dtype=torch.float64)
    s = torch.randn(6, 5, generator=gen, dtype=torch.float64)
    return w, u, x, s


def test_input_gradients_of_a_linear_critic_are_its_weights(linear):
    w, u, x, s = linear
    logits, gx, gs = input_gradients(linear_critic(w, u), x, s)
    assert torch.allclose(logits, (x.flatten(1) @ w.flatten()) + s @ u)
    assert torch.equal(gx, w.expand_as(x)) and torch.equal(gs, u.expand_as(s))


@pytest.mark.parametrize("k,p", [(2.0, 6.0), (1.0, 2.0), (0.5, 3.0)])
def test_ma_gp_closed_form(linear, k, p):
    w, u, x, s = linear
    _, gx, gs = input_gradients(linear_critic(w, u), x, s)
    expected = k * (float(w.pow(2).sum()) + float(u.pow(2).sum())) ** (p / 2)
    assert math.isclose(float(ma_gp(gx, gs, k, p)), expected, rel_tol=1e-12)


def test_r1_closed_form_ignores_the_text(linear):
    w, u, x, s = linear
    _, gx, _ = input_gradients(linear_critic(w, u), x, s)
    assert math.isclose(float(r1_penalty(gx, gamma=10.0)), 5.0 * float(w.pow(2).sum()),
                        rel_tol=1e-12)


def test_penalty_trains_the_critic_through_double_backprop(linear):
    """d MA-GP / d w for p = 2, k = 1: d(||w||^2 + ||u||^2)/dw = 2w."""
    _, u, x, s = linear
    w = torch.randn(3, 4, 4, dtype=torch.float64, requires_grad=True)
    _, gx, gs = input_gradients(linear_critic(w, u), x, s)
    ma_gp(gx, gs, 1.0, 2.0).backward()
    assert torch.allclose(w.grad, 2 * w.detach())


def test_hinge_losses_by_hand():
    real = torch.tensor([2.0, 0.5, -1.0])     # relu(1 - r): 0, 0.5, 2   -> mean 2.5/3
    fake = torch.tensor([-2.0, 0.0, 1.0])     # relu(1 + f): 0, 1, 2     -> mean 1
    mis = torch.tensor([-0.5, -3.0, 0.0])     # relu(1 + m): 0.5, 0, 1   -> mean 0.5
    assert math.isclose(float(hinge_discriminator_loss(real, fake, mis, 0.5)),
                        2.5 / 3 + 0.5 * 1 + 0.5 * 0.5, rel_tol=1e-6)
    assert math.isclose(float(hinge_discriminator_loss(real, fake, mis, 0.0)),
                        2.5 / 3 + 1, rel_tol=1e-6)
    assert math.isclose(float(hinge_discriminator_loss(real, fake)), 2.5 / 3 + 1, rel_tol=1e-6)
    assert math.isclose(float(hinge_generator_loss(fake)), -(-2.0 + 0.0 + 1.0) / 3, rel_tol=1e-6)


def test_condition_ramp_from_unconditional_to_conditional():
    assert [condition_weight(t, 5, 15) for t in (0, 4, 5, 9, 10, 14, 15, 100)] == [
        0.0, 0.0, 0.0, 0.4, 0.5, 0.9, 1.0, 1.0]
    assert condition_weight(0, 0, 0) == 1.0  # no ramp: conditional from the start
    assert [condition_weight(t, 3, 3) for t in (2, 3)] == [0.0, 1.0]  # a switch at step 3
