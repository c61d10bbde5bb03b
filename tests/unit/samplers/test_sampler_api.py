"""The shared sampler contract: names, signature, callback, seeds, grids, zero terminal SNR."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig
from pictor.samplers import SAMPLER_ALIASES, SAMPLERS, get_sampler
from pictor.samplers.common import (
    karras_sigmas,
    sigma_to_t,
    spaced_timesteps,
    timestep_grid,
)
from pictor.samplers.dpm_solver import karras_grid

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

CANONICAL = ["ddpm", "ddim", "dpm++2m", "dpm++2m-karras", "euler"]


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_config(ScheduleConfig(kind="linear"))


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_registry_names_and_aliases():
    assert sorted(SAMPLERS) == sorted(CANONICAL)
    for name in CANONICAL:
        assert get_sampler(name) is SAMPLERS[name]
    for alias, canonical in SAMPLER_ALIASES.items():
        assert get_sampler(alias) is SAMPLERS[canonical]
    assert get_sampler("DPM++ 2M Karras") is SAMPLERS["dpm++2m-karras"]
    assert get_sampler("  Euler ") is SAMPLERS["euler"]
    with pytest.raises(ValueError, match="dpm\\+\\+2m"):
        get_sampler("plms")


@pytest.mark.parametrize("name", CANONICAL)
def test_callback_cond_and_shapes(name, schedule, x_T, toy_network_factory):
    seen_conds, calls = [], []
    network = toy_network_factory(schedule, "v")

    def model(x, t, cond):
        seen_conds.append(cond)
        assert t.shape == (x.shape[0],) and t.is_floating_point()
        return network(x, t)

    def callback(i, n, t, x_t, x0_pred):
        calls.append((i, n, t))
        assert x_t.shape == x_T.shape and x0_pred.shape == x_T.shape

    cond = {"context": torch.zeros(2, 5, 8), "mask": torch.ones(2, 5, dtype=torch.bool)}
    out = get_sampler(name)(
        Denoiser(model, schedule, "v"),
        x_T,
        7,
        cond=cond,
        callback=callback,
        generator=torch.Generator().manual_seed(0),
    )
    assert out.shape == x_T.shape and out.dtype == x_T.dtype
    assert all(c is cond for c in seen_conds) and len(seen_conds) == 7
    assert [c[0] for c in calls] == list(range(7)) and all(c[1] == 7 for c in calls)
    timesteps = [c[2] for c in calls]
    assert timesteps == sorted(timesteps, reverse=True) and timesteps[0] == 999


@pytest.mark.parametrize("name", ["ddpm", "ddim"])
def test_seeded_noise_is_reproducible_and_dtype_independent(name, schedule, x_T, toy_denoiser):
    denoiser = toy_denoiser(schedule, "eps")
    opts = {"eta": 1.0} if name == "ddim" else {}
    run = lambda x, seed: SAMPLERS[name](  # noqa: E731
        denoiser, x, 20, generator=torch.Generator().manual_seed(seed), **opts
    )
    a, b, c = run(x_T, 7), run(x_T, 7), run(x_T, 8)
    assert torch.equal(a, b)
    assert (a - c).abs().max() > 1e-2
    # noise is drawn in float32 on the CPU, so a float32 run sees the same noise as a float64 one
    a32 = run(x_T.float(), 7)
    assert a32.dtype == torch.float32
    assert (a32.double() - a).abs().max() < 1e-4


def test_ddpm_equals_ddim_at_eta_one(schedule, x_T, toy_denoiser):
    """Song et al. 2021, Sec. 4.1: eta = 1 makes DDIM's step the DDPM posterior (same noise)."""
    denoiser = toy_denoiser(schedule, "eps")
    ddpm = SAMPLERS["ddpm"](denoiser, x_T, 25, generator=torch.Generator().manual_seed(3))
    ddim = SAMPLERS["ddim"](denoiser, x_T, 25, eta=1.0, generator=torch.Generator().manual_seed(3))
    assert (ddpm - ddim).abs().max() < 1e-10


def test_euler_equals_deterministic_ddim_on_the_same_grid(schedule, x_T, toy_denoiser):
    """Euler on the probability-flow ODE in Karras variables is DDIM (Karras et al. 2022)."""
    denoiser = toy_denoiser(schedule, "v")
    euler = SAMPLERS["euler"](denoiser, x_T, 25, timestep_spacing="trailing")
    ddim = SAMPLERS["ddim"](denoiser, x_T, 25)
    assert (euler - ddim).abs().max() < 1e-10


def test_trailing_and_leading_spacing_match_diffusers():
    for num_steps in range(1, 61):
        ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="trailing")
        ref.set_timesteps(num_steps)
        ours = spaced_timesteps(1000, num_steps, "trailing")
        assert ours.numel() == num_steps and ours[0] == 999 and ours[-1] >= 0
        if ref.timesteps.numel() == num_steps:
            assert ours.long().tolist() == ref.timesteps.tolist()
        # otherwise diffusers' np.arange overshoots by one point ending at -1 (e.g. 7 steps): we
        # compute T - i T/N for i < N instead, always N points
        ref = DDIMScheduler(num_train_timesteps=1000, timestep_spacing="leading", steps_offset=1)
        ref.set_timesteps(num_steps)
        assert (
            spaced_timesteps(1000, num_steps, "leading", 1).long().tolist()
            == ref.timesteps.tolist()
        )
    linspace = spaced_timesteps(1000, 25, "linspace")
    assert np.allclose(linspace.numpy(), np.linspace(0, 999, 25)[::-1])


def test_bad_arguments_raise_value_error(schedule, x_T, toy_denoiser):
    denoiser = toy_denoiser(schedule, "eps")
    for name in CANONICAL:
        with pytest.raises(ValueError, match="num_steps"):
            SAMPLERS[name](denoiser, x_T, 0)
        with pytest.raises(ValueError, match="num_steps"):
            SAMPLERS[name](denoiser, x_T, 1001)
    with pytest.raises(ValueError, match="spacing"):
        SAMPLERS["ddim"](denoiser, x_T, 10, timestep_spacing="uniform")
    with pytest.raises(ValueError, match="eta"):
        SAMPLERS["ddim"](denoiser, x_T, 10, eta=-1.0)
    with pytest.raises(ValueError, match="posterior_variance"):
        SAMPLERS["ddpm"](denoiser, x_T, 10, posterior_variance="learned")
    with pytest.raises(ValueError, match="guidance"):
        SAMPLERS["ddim"](denoiser, x_T, 10, guidance=object())


def test_karras_sigmas_and_sigma_to_t_match_diffusers(schedule):
    ref = DPMSolverMultistepScheduler(num_train_timesteps=1000, use_karras_sigmas=True)
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()
    ref.set_timesteps(20)
    sigmas = schedule.sigmas
    ours = karras_sigmas(float(sigmas[0]), float(sigmas[-1]), 20)
    assert np.allclose(ours.numpy(), ref.sigmas[:-1].double().numpy(), rtol=1e-6)
    log_sigmas = np.log(sigmas.numpy())
    expected_t = np.array([ref._sigma_to_t(s, log_sigmas) for s in ours.numpy()])
    assert np.allclose(sigma_to_t(ours, schedule).numpy(), expected_t, atol=1e-9)
    assert karras_grid(schedule, 20).t.round().long().tolist() == ref.timesteps.tolist()


def test_alpha_bar_at_inverts_sigma_to_t(schedule):
    t = torch.tensor([0.0, 0.3, 17.5, 500.25, 998.9, 999.0], dtype=torch.float64)
    ab = schedule.alpha_bar_at(t)
    assert torch.allclose(sigma_to_t(((1 - ab) / ab).sqrt(), schedule), t, atol=1e-9)
    assert torch.equal(
        schedule.alpha_bar_at(torch.tensor([3.0, 999.0])), schedule.alphas_cumprod[[3, 999]]
    )


@pytest.mark.parametrize("name", CANONICAL)
@pytest.mark.parametrize("prediction_type", ["v", "x0"])
def test_zero_terminal_snr_sampling_is_finite(name, prediction_type, x_T, toy_denoiser):
    schedule = NoiseSchedule.from_config(
        ScheduleConfig(kind="scaled_linear", zero_terminal_snr=True)
    )
    assert schedule.alphas_cumprod[-1] == 0
    grid = timestep_grid(schedule, 10)
    assert grid.ab[0] == 0  # "trailing" starts at the terminal, pure-noise step
    denoiser = toy_denoiser(schedule, prediction_type)
    for num_steps in (1, 2, 10):
        out = SAMPLERS[name](denoiser, x_T, num_steps, generator=torch.Generator().manual_seed(0))
        assert bool(torch.isfinite(out).all())


def test_zero_terminal_snr_with_eps_prediction(x_T, toy_denoiser):
    """eps at alpha_bar = 0 says nothing about x0: a clear error, unless the grid avoids t = T-1."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind="linear", zero_terminal_snr=True))
    denoiser = toy_denoiser(schedule, "eps")
    with pytest.raises(ValueError, match="zero terminal SNR"):
        SAMPLERS["ddim"](denoiser, x_T, 10)
    out = SAMPLERS["ddim"](denoiser, x_T, 10, timestep_spacing="leading")
    assert bool(torch.isfinite(out).all())
