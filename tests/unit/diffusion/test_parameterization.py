"""eps / x0 / v conversions (Salimans & Ho 2022): exact round trips, training targets, diffusers."""

from __future__ import annotations

import itertools

import pytest
import torch
from diffusers import DDPMScheduler

from pictor.diffusion.parameterization import (
    PREDICTION_TYPES,
    to_eps,
    to_v,
    to_x0,
    training_target,
)

CONVERT = {"x0": to_x0, "eps": to_eps, "v": to_v}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(64, 2, 3, 3, generator=g, dtype=torch.float64)
    noise = torch.randn(64, 2, 3, 3, generator=g, dtype=torch.float64)
    # noise levels across the whole range, including the zero-SNR end (ab = 0) and ab near 1
    ab = torch.cat(
        [torch.tensor([0.0, 1e-8, 1 - 1e-6]), torch.rand(61, generator=g, dtype=torch.float64)]
    )
    ab = ab.reshape(64, 1, 1, 1)
    return x0, noise, ab, ab.sqrt() * x0 + (1 - ab).sqrt() * noise


@pytest.mark.parametrize(("source", "target"), list(itertools.product(PREDICTION_TYPES, repeat=2)))
def test_every_conversion_recovers_the_truth(data, source, target):
    x0, noise, ab, x_t = data
    truth = {"x0": x0, "eps": noise, "v": training_target("v", x0, noise, ab)}
    # eps cannot be read at ab = 0 (x0 = (x_t - eps)/0) and x0 gives eps only through 1/sqrt(1-ab)
    keep = torch.ones(64, dtype=torch.bool)
    if source == "eps" and target != "eps":
        keep &= ab.flatten() > 1e-6
    if source == "x0" and target != "x0":
        keep &= ab.flatten() < 0.999
    out = CONVERT[target](source, truth[source], x_t, ab)
    assert torch.allclose(out[keep], truth[target][keep], atol=1e-6)


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
def test_round_trip_through_each_other_type(data, prediction_type):
    x0, noise, ab, x_t = data
    keep = (ab.flatten() > 1e-6) & (ab.flatten() < 0.999)
    pred = training_target(prediction_type, x0, noise, ab)
    for other in PREDICTION_TYPES:
        there = CONVERT[other](prediction_type, pred, x_t, ab)
        back = CONVERT[prediction_type](other, there, x_t, ab)
        assert torch.allclose(back[keep], pred[keep], atol=1e-6)


def test_v_matches_diffusers_get_velocity(data):
    x0, noise, _, _ = data
    ref = DDPMScheduler(num_train_timesteps=1000)
    ref.alphas_cumprod = ref.alphas_cumprod.double()
    t = torch.arange(0, 1000, 1000 // 64)[:64]
    ab = ref.alphas_cumprod[t].reshape(64, 1, 1, 1)
    assert torch.allclose(
        training_target("v", x0, noise, ab), ref.get_velocity(x0, noise, t), atol=1e-12
    )


def test_unknown_prediction_type():
    with pytest.raises(ValueError, match="prediction_type"):
        to_x0("epsilon", torch.zeros(1), torch.zeros(1), 0.5)
