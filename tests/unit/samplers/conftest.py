"""Denoisers with known behaviour for sampler tests: a smooth toy network, the exact Gaussian."""

from __future__ import annotations

import pytest
import torch

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.schedules import NoiseSchedule


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A scalar or (B,) tensor -> something that broadcasts against x (B, ...)."""
    values = values.to(device=x.device, dtype=torch.float64)
    return values.reshape(-1, *([1] * (x.ndim - 1))) if values.ndim else values


def _as_prediction(prediction_type, x0, x_t, ab):
    a, s = ab.sqrt(), (1 - ab).sqrt()
    if prediction_type == "x0":
        return x0
    eps = torch.where(s > 0, (x_t - a * x0) / s.clamp(min=1e-30), x_t)
    return eps if prediction_type == "eps" else a * eps - s * x0


def toy_network(schedule: NoiseSchedule, prediction_type: str, round_t: bool = False):
    """A fixed smooth nonlinear network f(x_t, t), deterministic, with O(1) outputs.

    It predicts x0_hat = 0.5 tanh(1.5 x) + 0.2 sin(2 x + 3 t/T) + 0.3 t/T - 0.1 and reports it in
    the requested parameterization (at the noise level of its input timestep), so that the
    sample stays O(1) and float32 rounding inside diffusers stays far below the tolerance.
    Accepts t as a float, a 0-d tensor (diffusers) or (B,) (ours). round_t: the network rounds
    its timestep input first (what diffusers feeds a network on Karras sigmas).
    """

    def model(x, t, cond=None):
        t = torch.as_tensor(t, dtype=torch.float64).cpu()
        if round_t:
            t = t.round()
        ab = _per_sample(schedule.alpha_bar_at(t), x)
        frac = _per_sample(t / schedule.num_timesteps, x)
        x0 = 0.5 * torch.tanh(1.5 * x) + 0.2 * torch.sin(2 * x + 3 * frac) + 0.3 * frac - 0.1
        return _as_prediction(prediction_type, x0, x, ab).to(x.dtype)

    return model


def gaussian_network(schedule: NoiseSchedule, prediction_type: str, mu: float, s: float):
    """The exact denoiser for data x0 ~ N(mu, s^2) per dimension.

    With x_t = a x0 + sqrt(1 - a^2) eps (a = sqrt(ab)), x_t ~ N(a mu, a^2 s^2 + 1 - a^2) and
    E[x0 | x_t] = mu + a s^2 / (a^2 s^2 + 1 - a^2) (x_t - a mu).
    """

    def model(x, t, cond=None):
        ab = _per_sample(schedule.alpha_bar_at(torch.as_tensor(t, dtype=torch.float64).cpu()), x)
        a = ab.sqrt()
        x0 = mu + a * s**2 / (ab * s**2 + 1 - ab) * (x - a * mu)
        return _as_prediction(prediction_type, x0, x, ab).to(x.dtype)

    return model


@pytest.fixture(autouse=True)
def single_thread():
    """Sampler tests run hundreds of tiny tensor ops: one intra-op thread is faster, and on a busy
    shared machine a second OpenMP thread waiting for a core slows them down tenfold."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def toy_denoiser():
    def make(schedule, prediction_type, round_t=False):
        return Denoiser(toy_network(schedule, prediction_type, round_t), schedule, prediction_type)

    return make


@pytest.fixture
def gaussian_denoiser():
    def make(schedule, prediction_type, mu, s):
        return Denoiser(
            gaussian_network(schedule, prediction_type, mu, s), schedule, prediction_type
        )

    return make


@pytest.fixture
def toy_network_factory():
    return toy_network
