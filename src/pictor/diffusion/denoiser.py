"""The one contract between networks and samplers: a model plus what its output means.

`model(x_t, t, cond) -> prediction` sees only the noisy sample, the (possibly fractional) training
timestep and an opaque conditioning object; the `Denoiser` turns the prediction into the pair
(x0_hat, eps_hat) with x_t = sqrt(ab_t) x0_hat + sqrt(1 - ab_t) eps_hat that every sampler uses.
Samplers never see a network; networks never see sigma or alpha_bar.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from pictor.diffusion.forward import broadcast_to
from pictor.diffusion.parameterization import check_prediction_type, to_eps, to_x0
from pictor.diffusion.schedules import NoiseSchedule


@dataclass
class Denoiser:
    model: Callable[[torch.Tensor, torch.Tensor, Any], torch.Tensor]  # (x_t, t (B,) float, cond)
    schedule: NoiseSchedule
    prediction_type: str  # "eps" | "x0" | "v"
    # optional map applied to x0_hat, eps_hat then re-derived from it (e.g. dynamic thresholding)
    x0_transform: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __post_init__(self) -> None:
        check_prediction_type(self.prediction_type)

    def predict_x0_eps(
        self,
        x_t: torch.Tensor,
        t: torch.Tensor | float,
        cond: Any = None,
        alpha_bar_t: torch.Tensor | float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0_hat, eps_hat), each shaped like x_t (B, ...).

        t: the training timestep(s) given to the network, a float or (B,) (fractional allowed);
            the network receives a (B,) tensor, float64 if x_t is float64, else float32.
        alpha_bar_t: the noise level of x_t, a float or (B,); None = schedule.alpha_bar_at(t).
        Samplers whose noise levels are not on the training grid (Karras sigmas) pass it explicitly.
        """
        batch_size = x_t.shape[0]
        # the network's t: float32, or float64 when the sample is (fractional t keep every digit)
        t_dtype = torch.float64 if x_t.dtype == torch.float64 else torch.float32
        t_model = torch.as_tensor(t, dtype=t_dtype).to(x_t.device)
        if t_model.ndim == 0:
            t_model = t_model.expand(batch_size)  # (B,)
        if alpha_bar_t is None:
            alpha_bar_t = self.schedule.alpha_bar_at(t_model.double().cpu())
        ab = torch.as_tensor(alpha_bar_t, dtype=torch.float64)
        if self.prediction_type == "eps" and bool((ab == 0).any()):
            raise ValueError(
                "an eps-prediction model cannot recover x0 where alpha_bar_t = 0 "
                "(zero terminal SNR): "
                "its input is pure noise. Use v- or x0-prediction with zero_terminal_snr, or a "
                "sampler timestep spacing that does not start at the last timestep ('leading')."
            )
        pred = self.model(x_t, t_model, cond)
        if pred.shape != x_t.shape:
            raise ValueError(
                f"model output shape {tuple(pred.shape)} must equal x_t shape {tuple(x_t.shape)}"
            )
        ab_b = broadcast_to(ab, x_t).double()  # (B, 1, ..., 1) or 0-d
        x0 = to_x0(self.prediction_type, pred, x_t, ab_b)
        if self.x0_transform is None:
            return x0, to_eps(self.prediction_type, pred, x_t, ab_b)
        x0 = self.x0_transform(x0)
        return x0, to_eps("x0", x0, x_t, ab_b)
