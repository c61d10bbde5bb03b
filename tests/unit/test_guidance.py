"""Classifier-free guidance, negative prompts, guidance rescale and dynamic thresholding."""

from __future__ import annotations

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.guiders.guider_utils import rescale_noise_cfg

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig
from pictor.guidance import (
    CFG,
    concat_conds,
    dynamic_threshold,
    expand_cond,
    guided_model,
    rescale_guidance,
)
from pictor.samplers import SAMPLERS

SCHEDULE = NoiseSchedule.from_config(ScheduleConfig("linear"))


class CountingModel:
    """A conditional 'network': output depends on x, t and the conditioning tensor (B, L, D)."""

    def __init__(self):
        self.batch_sizes = []

    def __call__(self, x, t, cond):
        self.batch_sizes.append(x.shape[0])
        shift = cond["context"].mean(dim=(1, 2)) * cond["mask"].float().mean(dim=1)  # (B,)
        return (
            torch.tanh(x) + shift.reshape(-1, 1, 1, 1).to(x) + 1e-3 * t.reshape(-1, 1, 1, 1).to(x)
        )


def _cond(value, batch_size=2, length=4):
    return {
        "context": torch.full((batch_size, length, 3), float(value)),
        "mask": torch.ones(batch_size, length, dtype=torch.bool),
    }


@pytest.fixture
def setup():
    model = CountingModel()
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    t = torch.full((2,), 500.0)
    return model, Denoiser(model, SCHEDULE, "eps"), x, t


def test_scale_one_and_zero(setup):
    model, denoiser, x, t = setup
    cond, uncond = _cond(1.0), _cond(-1.0)
    out_one = guided_model(denoiser, CFG(scale=1.0, uncond=uncond)).model(x, t, cond)
    assert torch.equal(out_one, model(x, t, cond))
    out_zero = guided_model(denoiser, CFG(scale=0.0, uncond=uncond)).model(x, t, cond)
    assert torch.equal(out_zero, model(x, t, uncond))


def test_combination_in_one_batched_forward(setup):
    model, denoiser, x, t = setup
    cond, uncond = _cond(1.0), _cond(-1.0)
    model.batch_sizes.clear()
    out = guided_model(denoiser, CFG(scale=7.5, uncond=uncond)).model(x, t, cond)
    assert model.batch_sizes == [4]  # cond and uncond together, one call
    c, u = model(x, t, cond), model(x, t, uncond)
    assert torch.allclose(out, u + 7.5 * (c - u))


def test_negative_prompt_is_the_uncond_and_batch_one_uncond_broadcasts(setup):
    _, denoiser, x, t = setup
    cond, negative = _cond(1.0), _cond(0.3, batch_size=1)
    out = guided_model(denoiser, CFG(scale=3.0, uncond=negative)).model(x, t, cond)
    out_full = guided_model(denoiser, CFG(scale=3.0, uncond=_cond(0.3))).model(x, t, cond)
    assert torch.allclose(out, out_full)
    other = guided_model(denoiser, CFG(scale=3.0, uncond=_cond(0.0))).model(x, t, cond)
    assert not torch.allclose(out, other)


def test_rescale(setup):
    model, denoiser, x, t = setup
    cond, uncond = _cond(1.0), _cond(-1.0)
    plain = guided_model(denoiser, CFG(scale=7.5, uncond=uncond, rescale=0.0)).model(x, t, cond)
    assert torch.equal(plain, rescale_guidance(plain, model(x, t, cond), 0.0))
    rescaled = guided_model(denoiser, CFG(scale=7.5, uncond=uncond, rescale=0.7)).model(x, t, cond)
    assert torch.allclose(
        rescaled, rescale_noise_cfg(plain, model(x, t, cond), guidance_rescale=0.7)
    )
    full = rescale_guidance(plain, model(x, t, cond), 1.0)
    dims = (1, 2, 3)
    assert torch.allclose(
        full.std(dim=dims), model(x, t, cond).std(dim=dims)
    )  # eq. 15: std restored


def test_dynamic_threshold():
    g = torch.Generator().manual_seed(0)
    x0 = 3 * torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
    out = dynamic_threshold(x0, 0.995)
    assert float(out.abs().max()) <= 1.0 + 1e-12
    ref = DDIMScheduler(thresholding=True, dynamic_thresholding_ratio=0.995, sample_max_value=1e9)
    assert torch.allclose(out, ref._threshold_sample(x0))
    small = 0.5 * torch.tanh(x0)  # |x0| < 1: s = max(quantile, 1) = 1, nothing changes
    assert torch.equal(dynamic_threshold(small, 0.995), small)
    # s = the percentile: values at or below it are only divided by s
    row = torch.linspace(-4, 4, 101, dtype=torch.float64).reshape(1, 101)
    s = torch.quantile(row.abs(), 0.9)
    assert torch.allclose(dynamic_threshold(row, 0.9), row.clamp(-s, s) / s)


def test_threshold_applies_to_the_x0_prediction(setup):
    _, denoiser, x, t = setup
    guided = CFG(scale=12.0, uncond=_cond(-1.0), dynamic_threshold=0.9).apply(denoiser)
    x0, eps = guided.predict_x0_eps(x, t, _cond(1.0))
    assert float(x0.abs().max()) <= 1.0 + 1e-12
    ab = SCHEDULE.alphas_cumprod[500]
    assert torch.allclose(ab.sqrt() * x0 + (1 - ab).sqrt() * eps, x)


def test_conds_concatenate_and_errors():
    a, b = _cond(1.0), _cond(2.0)
    both = concat_conds(a, b)
    assert both["context"].shape == (4, 4, 3) and torch.equal(both["context"][2:], b["context"])
    assert concat_conds(None, None) is None
    assert expand_cond(_cond(1.0, batch_size=1), 3)["mask"].shape == (3, 4)
    with pytest.raises(ValueError, match="same length"):
        concat_conds(_cond(1.0, length=4), _cond(1.0, length=6))
    with pytest.raises(ValueError, match="batch"):
        concat_conds(torch.zeros(2, 3), None)
    with pytest.raises(ValueError, match="uncond"):
        guided_model(Denoiser(CountingModel(), SCHEDULE, "eps"), CFG(scale=5.0, uncond=None))
    with pytest.raises(ValueError, match="rescale"):
        CFG(rescale=1.5)
    with pytest.raises(ValueError, match="percentile"):
        CFG(dynamic_threshold=99.5)


def test_samplers_take_guidance(setup):
    _, denoiser, _, _ = setup
    x_T = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    cond = _cond(1.0)
    for name, sample in SAMPLERS.items():
        plain = sample(denoiser, x_T, 5, cond=cond, generator=torch.Generator().manual_seed(0))
        scale_one = sample(
            denoiser,
            x_T,
            5,
            cond=cond,
            guidance=CFG(scale=1.0, uncond=_cond(-1.0)),
            generator=torch.Generator().manual_seed(0),
        )
        assert torch.equal(plain, scale_one), name
        guided = sample(
            denoiser,
            x_T,
            5,
            cond=cond,
            guidance=CFG(scale=4.0, uncond=_cond(-1.0)),
            generator=torch.Generator().manual_seed(0),
        )
        assert bool(torch.isfinite(guided).all()) and not torch.allclose(guided, plain), name


def test_guidance_interval_guides_only_inside_and_skips_the_uncond_pass(setup):
    model, denoiser, x, _ = setup
    uncond = _cond(-1.0, batch_size=1)
    cond = _cond(0.5)
    t_lo, t_hi = torch.full((2,), 100.0), torch.full((2,), 900.0)
    ab = SCHEDULE.alpha_bar_at(torch.tensor([100.0, 900.0], dtype=torch.float64))
    sigma_lo, sigma_hi = ((1 - ab) / ab).sqrt().tolist()  # sigma at t = 100 and at t = 900
    full = guided_model(denoiser, CFG(scale=4.0, uncond=uncond))
    cond_only = guided_model(denoiser, CFG(scale=1.0, uncond=uncond))
    # an interval that holds t = 900 but not t = 100
    limited = guided_model(denoiser, CFG(scale=4.0, uncond=uncond,
                                         interval=(sigma_lo * 1.5, sigma_hi * 2)))
    model.batch_sizes.clear()
    assert torch.equal(limited.model(x, t_hi, cond), full.model(x, t_hi, cond))
    assert model.batch_sizes == [4, 4]  # inside: one batched pass of cond + uncond
    model.batch_sizes.clear()
    out = limited.model(x, t_lo, cond)
    assert model.batch_sizes == [2]  # outside: the conditional half only
    assert torch.equal(out, cond_only.model(x, t_lo, cond))
    assert not torch.equal(out, full.model(x, t_lo, cond))
    # (0, inf) is the same as no interval
    every = guided_model(denoiser, CFG(scale=4.0, uncond=uncond, interval=(0.0, float("inf"))))
    assert torch.equal(every.model(x, t_lo, cond), full.model(x, t_lo, cond))
    with pytest.raises(ValueError, match="sigma_lo"):
        CFG(interval=(2.0, 1.0))
