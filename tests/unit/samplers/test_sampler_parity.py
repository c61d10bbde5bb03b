"""Our sampling loops against diffusers' schedulers, end to end, in float64.

Setup shared by every case:
- the same fixed smooth toy network (conftest.toy_network), the same x_T, the same schedule: we
  build diffusers with `trained_betas` and then hand it our float64 betas/alphas_cumprod so both
  sides read identical noise levels (diffusers would otherwise round them to float32 first);
- diffusers configured identically: timestep_spacing="trailing" (our default; Euler's default
  "linspace" is tested separately), clip_sample=False,
  set_alpha_to_one=True (DDIM), final_sigmas_type="zero" (its default for DPM/Euler).
Every sampler runs with each prediction type: eps ("epsilon"), v ("v_prediction") and x0
(diffusers' "sample"). Tolerance 1e-5 max abs on the final sample. The observed gap (~3e-7) is diffusers' own float32:
DPMSolverMultistep and EulerDiscrete cast the sample and their sigmas to float32 in every step.

Named differences and how each test bridges them:
- Euler: our x_T is N(0, I) noise of the variance-preserving process, so its Karras-space start
  is x_T sqrt(1 + sigma_max^2); diffusers scales by init_noise_sigma = sigma_max. We give diffusers
  x_T * sqrt(1 + sigma_max^2) as its initial latents.
- Euler at fractional timesteps ("linspace"): we interpolate log sigma between training steps
  (k-diffusion), diffusers interpolates sigma linearly. We hand diffusers our sigmas
  (set_timesteps(sigmas=...)); it then recovers the same fractional timesteps itself.
- DPM-Solver++ with Karras sigmas: diffusers rounds the network's timestep to an integer, we pass
  the fractional one; the toy network rounds its input so both see the same value.
- Stochastic samplers: we draw noise in float32 on the CPU from the generator (device/dtype
  independent), diffusers in the model's dtype. We patch diffusers' `randn_tensor` to draw the
  same way from the same seeded generator; the draws then come in the same order and shape.
"""

from __future__ import annotations

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
)
from diffusers.schedulers import scheduling_ddim, scheduling_ddpm

from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig
from pictor.samplers import SAMPLERS
from pictor.samplers.common import timestep_grid

# diffusers builds sigmas with np.array(tensor), which numpy 2 reports as deprecated
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOLERANCE = 1e-5
DIFFUSERS_PREDICTION = {"eps": "epsilon", "v": "v_prediction", "x0": "sample"}
SEED = 1234


@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.from_config(ScheduleConfig(kind="scaled_linear"))


@pytest.fixture(scope="module")
def x_T():
    return torch.randn(2, 3, 5, 5, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def _diffusers(cls, schedule, prediction_type, **config):
    scheduler = cls(
        num_train_timesteps=schedule.num_timesteps,
        trained_betas=schedule.betas.numpy(),
        prediction_type=DIFFUSERS_PREDICTION[prediction_type],
        **config,
    )
    scheduler.betas = schedule.betas.clone()
    scheduler.alphas = 1.0 - scheduler.betas
    scheduler.alphas_cumprod = schedule.alphas_cumprod.clone()
    return scheduler


def _diffusers_loop(scheduler, network, x, num_steps=None, step_kwargs=None, **set_kwargs):
    if num_steps is not None:
        scheduler.set_timesteps(num_steps, **set_kwargs)
    for t in scheduler.timesteps:
        out = network(scheduler.scale_model_input(x, t), t)
        x = scheduler.step(out, t, x, **(step_kwargs or {})).prev_sample
    return x


def _our_noise_convention(shape, generator=None, device=None, dtype=None, layout=None):
    noise = torch.randn(shape, generator=generator, dtype=torch.float32, device="cpu")
    return noise.to(device=device or "cpu", dtype=dtype)


def _max_abs(a, b):
    return (a - b).abs().max().item()


STEPS = [10, 25, 50]
PREDICTIONS = ["eps", "v", "x0"]


@pytest.mark.parametrize("num_steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_matches_diffusers(schedule, x_T, toy_denoiser, num_steps, prediction_type):
    denoiser = toy_denoiser(schedule, prediction_type)
    ref = _diffusers(
        DDIMScheduler,
        schedule,
        prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    expected = _diffusers_loop(ref, denoiser.model, x_T, num_steps)
    ours = SAMPLERS["ddim"](denoiser, x_T, num_steps)
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("num_steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddim_eta_matches_diffusers(
    schedule, x_T, toy_denoiser, monkeypatch, num_steps, prediction_type
):
    monkeypatch.setattr(scheduling_ddim, "randn_tensor", _our_noise_convention)
    denoiser = toy_denoiser(schedule, prediction_type)
    ref = _diffusers(
        DDIMScheduler,
        schedule,
        prediction_type,
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="trailing",
    )
    expected = _diffusers_loop(
        ref,
        denoiser.model,
        x_T,
        num_steps,
        step_kwargs={"eta": 0.7, "generator": torch.Generator().manual_seed(SEED)},
    )
    ours = SAMPLERS["ddim"](
        denoiser, x_T, num_steps, eta=0.7, generator=torch.Generator().manual_seed(SEED)
    )
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("num_steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_ddpm_matches_diffusers(
    schedule, x_T, toy_denoiser, monkeypatch, num_steps, prediction_type
):
    monkeypatch.setattr(scheduling_ddpm, "randn_tensor", _our_noise_convention)
    denoiser = toy_denoiser(schedule, prediction_type)
    ref = _diffusers(
        DDPMScheduler,
        schedule,
        prediction_type,
        clip_sample=False,
        variance_type="fixed_small",
        timestep_spacing="trailing",
    )
    expected = _diffusers_loop(
        ref,
        denoiser.model,
        x_T,
        num_steps,
        step_kwargs={"generator": torch.Generator().manual_seed(SEED)},
    )
    ours = SAMPLERS["ddpm"](denoiser, x_T, num_steps, generator=torch.Generator().manual_seed(SEED))
    # diffusers adds sqrt(1e-20) * z on its last step (a variance floor): 1e-10, far below 1e-5
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("num_steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_dpmpp_2m_matches_diffusers(schedule, x_T, toy_denoiser, num_steps, prediction_type):
    denoiser = toy_denoiser(schedule, prediction_type)
    ref = _diffusers(
        DPMSolverMultistepScheduler,
        schedule,
        prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        timestep_spacing="trailing",
    )
    expected = _diffusers_loop(ref, denoiser.model, x_T, num_steps)
    ours = SAMPLERS["dpm++2m"](denoiser, x_T, num_steps)
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("num_steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_dpmpp_2m_karras_matches_diffusers(schedule, x_T, toy_denoiser, num_steps, prediction_type):
    # the network rounds its timestep: diffusers passes round(t), we pass t (see module docstring)
    denoiser = toy_denoiser(schedule, prediction_type, round_t=True)
    ref = _diffusers(
        DPMSolverMultistepScheduler,
        schedule,
        prediction_type,
        algorithm_type="dpmsolver++",
        solver_order=2,
        solver_type="midpoint",
        use_karras_sigmas=True,
    )
    expected = _diffusers_loop(ref, denoiser.model, x_T, num_steps)
    ours = SAMPLERS["dpm++2m-karras"](denoiser, x_T, num_steps)
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("num_steps", STEPS)
@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_euler_matches_diffusers(schedule, x_T, toy_denoiser, num_steps, prediction_type):
    denoiser = toy_denoiser(schedule, prediction_type)
    ref = _diffusers(EulerDiscreteScheduler, schedule, prediction_type, timestep_spacing="trailing")
    ref.set_timesteps(num_steps)
    # our x_T is VP noise: its Karras-space start is x_T sqrt(1 + sigma_max^2), not x_T sigma_max
    start = x_T * (1 + ref.sigmas[0].double() ** 2) ** 0.5
    expected = _diffusers_loop(ref, denoiser.model, start)
    ours = SAMPLERS["euler"](denoiser, x_T, num_steps, timestep_spacing="trailing")
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("prediction_type", PREDICTIONS)
def test_euler_fractional_timesteps_match_diffusers(schedule, x_T, toy_denoiser, prediction_type):
    """'linspace' spacing: fractional timesteps; diffusers gets our (log-interpolated) sigmas."""
    num_steps = 25
    denoiser = toy_denoiser(schedule, prediction_type)
    grid = timestep_grid(schedule, num_steps, "linspace", integer=False)
    assert not bool((grid.t == grid.t.round()).all())  # really fractional
    ref = _diffusers(EulerDiscreteScheduler, schedule, prediction_type)
    ref.set_timesteps(sigmas=(((1 - grid.ab) / grid.ab).sqrt()).tolist() + [0.0])
    assert _max_abs(ref.timesteps.double(), grid.t) < 1e-3  # it recovers our timesteps (float32)
    start = x_T * (1 + ref.sigmas[0].double() ** 2) ** 0.5
    expected = _diffusers_loop(ref, denoiser.model, start)
    ours = SAMPLERS["euler"](denoiser, x_T, num_steps)  # "linspace" is Euler's default
    assert _max_abs(ours, expected) < TOLERANCE


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_other_schedules_and_leading_spacing_match_diffusers(x_T, toy_denoiser, kind):
    """DDIM with SD v1's 'leading' spacing and steps_offset=1, DPM++ 2M on other schedules."""
    schedule = NoiseSchedule.from_config(ScheduleConfig(kind=kind))
    denoiser = toy_denoiser(schedule, "v")
    ref = _diffusers(
        DDIMScheduler,
        schedule,
        "v",
        clip_sample=False,
        set_alpha_to_one=True,
        timestep_spacing="leading",
        steps_offset=1,
    )
    expected = _diffusers_loop(ref, denoiser.model, x_T, 20)
    ours = SAMPLERS["ddim"](denoiser, x_T, 20, timestep_spacing="leading", steps_offset=1)
    assert _max_abs(ours, expected) < TOLERANCE

    ref = _diffusers(DPMSolverMultistepScheduler, schedule, "v", timestep_spacing="trailing")
    expected = _diffusers_loop(ref, denoiser.model, x_T, 20)
    assert _max_abs(SAMPLERS["dpm++2m"](denoiser, x_T, 20), expected) < TOLERANCE
