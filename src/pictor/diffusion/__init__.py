"""Diffusion maths: schedules, forward process, parameterizations, losses, the denoiser contract."""

from pictor.diffusion.denoiser import Denoiser
from pictor.diffusion.forward import q_sample, snr
from pictor.diffusion.losses import diffusion_loss, min_snr_weight, sample_timesteps
from pictor.diffusion.parameterization import (
    PREDICTION_TYPES,
    to_eps,
    to_v,
    to_x0,
    training_target,
)
from pictor.diffusion.schedules import NoiseSchedule, ScheduleConfig

__all__ = [
    "PREDICTION_TYPES",
    "Denoiser",
    "NoiseSchedule",
    "ScheduleConfig",
    "diffusion_loss",
    "min_snr_weight",
    "q_sample",
    "sample_timesteps",
    "snr",
    "to_eps",
    "to_v",
    "to_x0",
    "training_target",
]
