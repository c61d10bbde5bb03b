"""q(x_t | x_0) (Ho et al. 2020, eq. 4) and SNR, against the formula and diffusers' add_noise."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDPMScheduler

from pictor.diffusion.forward import q_sample, snr
from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_config(ScheduleConfig("scaled_linear"))


def test_q_sample_is_eq_4_and_matches_diffusers(schedule):
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    noise = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    t = torch.tensor([0, 17, 500, 999])
    x_t = q_sample(x0, t, noise, schedule.alphas_cumprod)
    ab = schedule.alphas_cumprod[t].reshape(4, 1, 1, 1)
    assert torch.allclose(x_t, ab.sqrt() * x0 + (1 - ab).sqrt() * noise, atol=1e-14)
    ref = DDPMScheduler(num_train_timesteps=1000)
    ref.alphas_cumprod = schedule.alphas_cumprod.clone()
    assert torch.allclose(x_t, ref.add_noise(x0, noise, t), atol=1e-12)


def test_q_sample_keeps_dtype_and_has_unit_variance_for_unit_data(schedule):
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(20000, 4, generator=g)
    noise = torch.randn(20000, 4, generator=g)
    t = torch.full((20000,), 300)
    x_t = q_sample(x0, t, noise, schedule.alphas_cumprod)
    assert x_t.dtype == torch.float32
    assert abs(x_t.std().item() - 1.0) < 0.02  # variance preserving: ab + (1 - ab) = 1


def test_snr_and_errors(schedule):
    t = torch.tensor([0, 999])
    ab = schedule.alphas_cumprod[t]
    assert torch.allclose(snr(schedule.alphas_cumprod, t), ab / (1 - ab))
    with pytest.raises(ValueError, match="integer"):
        snr(schedule.alphas_cumprod, torch.tensor([1.5]))
    with pytest.raises(ValueError, match="shape"):
        q_sample(
            torch.zeros(2, 3), torch.tensor([1, 2]), torch.zeros(2, 4), schedule.alphas_cumprod
        )
