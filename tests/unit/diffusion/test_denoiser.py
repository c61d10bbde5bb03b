"""The Denoiser contract: model output -> (x0_hat, eps_hat) consistent with x_t."""

from __future__ import annotations

import pytest
import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.parameterization import PREDICTION_TYPES, training_target
from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_config(ScheduleConfig("cosine", zero_terminal_snr=True))


def _perfect_model(schedule, prediction_type, x0, noise):
    """Returns the true target for the x_t built from x0, noise at the given timestep."""

    def model(x_t, t, cond):
        assert t.shape == (x_t.shape[0],) and t.dtype == torch.float64  # as x_t
        ab = schedule.alpha_bar_at(t.double()).reshape(-1, 1, 1)
        return training_target(prediction_type, x0, noise, ab)

    return model


@pytest.mark.parametrize("prediction_type", PREDICTION_TYPES)
@pytest.mark.parametrize("t", [0.0, 250.0, 612.5, 998.0])
def test_predict_x0_eps_recovers_x0_and_noise(schedule, prediction_type, t):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    noise = torch.randn(3, 4, 5, generator=g, dtype=torch.float64)
    ab = schedule.alpha_bar_at(torch.tensor(t))
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * noise
    denoiser = Denoiser(
        _perfect_model(schedule, prediction_type, x0, noise), schedule, prediction_type
    )
    x0_hat, eps_hat = denoiser.predict_x0_eps(x_t, t)
    assert torch.allclose(x0_hat, x0, atol=1e-6) and torch.allclose(eps_hat, noise, atol=1e-6)
    # an explicit alpha_bar (samplers off the training grid) gives the same when it agrees
    x0_hat2, _ = denoiser.predict_x0_eps(x_t, torch.full((3,), t), alpha_bar_t=float(ab))
    assert torch.allclose(x0_hat2, x0_hat)


def test_zero_terminal_snr(schedule):
    x_t = torch.randn(2, 3, dtype=torch.float64)
    v_model = Denoiser(lambda x, t, c: torch.ones_like(x), schedule, "v")
    x0_hat, eps_hat = v_model.predict_x0_eps(x_t, 999.0)
    assert torch.allclose(x0_hat, -torch.ones_like(x_t)) and torch.allclose(eps_hat, x_t)
    eps_model = Denoiser(lambda x, t, c: torch.zeros_like(x), schedule, "eps")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        eps_model.predict_x0_eps(x_t, 999.0)


def test_x0_transform_rederives_eps(schedule):
    x_t = torch.randn(2, 3, dtype=torch.float64)
    denoiser = Denoiser(
        lambda x, t, c: 5 * torch.ones_like(x),
        schedule,
        "x0",
        x0_transform=lambda x0: x0.clamp(-1, 1),
    )
    x0_hat, eps_hat = denoiser.predict_x0_eps(x_t, 400.0)
    ab = schedule.alphas_cumprod[400]
    assert torch.equal(x0_hat, torch.ones_like(x_t))
    assert torch.allclose(ab.sqrt() * x0_hat + (1 - ab).sqrt() * eps_hat, x_t)


def test_timestep_dtype_follows_the_sample(schedule):
    seen = []
    denoiser = Denoiser(lambda x, t, c: seen.append(t) or torch.zeros_like(x), schedule, "v")
    for dtype in (torch.float16, torch.float32, torch.float64):
        denoiser.predict_x0_eps(torch.zeros(2, 3, dtype=dtype), 10.5)
    assert [t.dtype for t in seen] == [torch.float32, torch.float32, torch.float64]
    assert all(t.shape == (2,) and float(t[0]) == 10.5 for t in seen)


def test_errors(schedule):
    with pytest.raises(ValueError, match="prediction_type"):
        Denoiser(lambda x, t, c: x, schedule, "epsilon")
    bad = Denoiser(lambda x, t, c: x[:, :1], schedule, "eps")
    with pytest.raises(ValueError, match="shape"):
        bad.predict_x0_eps(torch.zeros(2, 3), 10.0)
