"""Schedules: closed forms (Ho 2020, Nichol & Dhariwal 2021, Lin et al. 2024) and diffusers."""

from __future__ import annotations

import math

import pytest
import torch
from diffusers import DDPMScheduler
from diffusers.schedulers.scheduling_ddpm import rescale_zero_terminal_snr as diffusers_rescale

from pictor.diffusion.schedules import (
    NoiseSchedule,
    ScheduleConfig,
    alphas_cumprod_from_betas,
    cosine_betas,
    linear_betas,
    rescale_zero_terminal_snr,
    scaled_linear_betas,
)

KINDS = ["cosine", "linear", "scaled_linear"]


@pytest.mark.parametrize("zero_terminal_snr", [False, True])
@pytest.mark.parametrize("kind", KINDS)
def test_alpha_bar_strictly_decreasing_in_unit_interval(kind, zero_terminal_snr):
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind, zero_terminal_snr=zero_terminal_snr))
    ab = schedule.alphas_cumprod
    assert ab.dtype == torch.float64 and ab.shape == (1000,) and schedule.num_timesteps == 1000
    assert bool((ab[1:] < ab[:-1]).all())
    assert bool((ab <= 1).all()) and bool((ab[:-1] > 0).all())
    assert bool(((schedule.betas > 0) & (schedule.betas <= 1)).all())
    if zero_terminal_snr:
        assert ab[-1].item() == 0.0 and schedule.betas[-1].item() == 1.0
        assert math.isinf(schedule.sigmas[-1].item())
    else:
        assert ab[-1] > 0


@pytest.mark.parametrize(
    ("ours", "name", "kwargs"),
    [
        (linear_betas, "linear", {}),
        (scaled_linear_betas, "scaled_linear", {"beta_start": 0.00085, "beta_end": 0.012}),
        (cosine_betas, "squaredcos_cap_v2", {}),
    ],
)
def test_betas_match_diffusers(ours, name, kwargs):
    ref = DDPMScheduler(num_train_timesteps=1000, beta_schedule=name, **kwargs).betas.double()
    assert torch.allclose(ours(1000), ref, rtol=1e-5, atol=1e-9)  # diffusers builds them in float32


def test_cosine_is_nichol_dhariwal_eq_17():
    T, s = 1000, 0.008
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    betas = cosine_betas(T, s=s)
    ab = alphas_cumprod_from_betas(betas)
    unclipped = int((betas < 0.999).sum())  # the clip only touches the last few steps
    assert unclipped > 990
    expected = torch.tensor([f(t + 1) / f(0) for t in range(unclipped)], dtype=torch.float64)
    assert torch.allclose(ab[:unclipped], expected, rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("kind", KINDS)
def test_zero_terminal_snr_is_lin_et_al_algorithm_1(kind):
    betas = NoiseSchedule.from_config(ScheduleConfig(kind)).betas
    rescaled = rescale_zero_terminal_snr(betas)
    old, new = alphas_cumprod_from_betas(betas).sqrt(), alphas_cumprod_from_betas(rescaled).sqrt()
    # sqrt(ab) shifted so the last is 0 and scaled so the first is unchanged: an affine map
    expected = (old - old[-1]) * old[0] / (old[0] - old[-1])
    assert torch.allclose(new, expected, atol=1e-12)
    assert new[-1].item() == 0.0 and abs(new[0].item() - old[0].item()) < 1e-15
    assert torch.allclose(rescaled, diffusers_rescale(betas.clone()), atol=1e-12)


def test_config_defaults_and_errors():
    default = NoiseSchedule.from_config(ScheduleConfig())
    assert torch.equal(default.betas, cosine_betas(1000))
    custom = NoiseSchedule.from_config(
        ScheduleConfig("linear", 100, beta_start=1e-3, beta_end=0.05)
    )
    assert torch.allclose(custom.betas, torch.linspace(1e-3, 0.05, 100, dtype=torch.float64))
    with pytest.raises(ValueError, match="kind"):
        NoiseSchedule.from_config(ScheduleConfig("sigmoid"))
    with pytest.raises(ValueError, match="beta_start"):
        NoiseSchedule.from_config(ScheduleConfig("cosine", beta_start=1e-4))
    with pytest.raises(ValueError, match="beta_start"):
        linear_betas(10, beta_start=0.1, beta_end=0.01)
    with pytest.raises(ValueError, match="num_timesteps"):
        linear_betas(1)
    with pytest.raises(ValueError, match="beta"):
        NoiseSchedule(torch.tensor([0.1, 0.0, 0.2]))


def test_sigmas_snr_and_fractional_alpha_bar():
    schedule = NoiseSchedule.from_config(ScheduleConfig("linear"))
    ab = schedule.alphas_cumprod
    assert torch.allclose(schedule.sigmas, ((1 - ab) / ab).sqrt())
    t = torch.tensor([0, 10, 999])
    assert torch.allclose(schedule.snr(t), ab[t] / (1 - ab[t]))
    assert torch.allclose(schedule.snr(t), 1 / schedule.sigmas[t] ** 2)
    half = schedule.alpha_bar_at(torch.tensor(10.5))
    assert ab[11] < half < ab[10]
    # log sigma is interpolated linearly: the midpoint's sigma is the geometric mean
    s10, s11 = schedule.sigmas[10], schedule.sigmas[11]
    assert torch.allclose(((1 - half) / half).sqrt(), (s10 * s11).sqrt())
    with pytest.raises(ValueError, match="timesteps"):
        schedule.alpha_bar_at(1000.0)
