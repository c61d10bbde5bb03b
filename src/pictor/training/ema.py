"""Exponential moving average (EMA) of model weights, the weights used for sampling.

After every optimizer step n (counting from 0), each EMA tensor moves toward the live one:

    theta_ema <- beta_n * theta_ema + (1 - beta_n) * theta                      (Polyak averaging)

with a constant beta, or beta = 0.5 ** (1 / halflife_steps) when a half-life is given (the form
EDM, Karras et al. 2022, Appendix C, uses: after `halflife_steps` steps a weight's contribution
has halved). With warm-up, beta_n = min(beta, (1 + n) / (10 + n)) (the ramp of TensorFlow's
ExponentialMovingAverage with num_updates, also diffusers' EMAModel), so the average is not
dominated by the random initialisation early in training.

Buffers (e.g. normalisation statistics) are copied, not averaged.
"""

from __future__ import annotations

import copy

import torch
from torch import nn


def ema_decay_from_halflife(halflife_steps: float) -> float:
    """beta such that beta ** halflife_steps = 1/2."""
    if halflife_steps <= 0:
        raise ValueError(f"ema halflife_steps must be positive, got {halflife_steps}")
    return 0.5 ** (1.0 / halflife_steps)


class EMA:
    """Holds `module`, a frozen copy of the model whose parameters are the running average."""

    def __init__(self, model: nn.Module, *, decay: float = 0.999,
                 halflife_steps: float | None = None, warmup: bool = True) -> None:
        self.decay = ema_decay_from_halflife(halflife_steps) if halflife_steps else float(decay)
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema decay must be in [0, 1), got {self.decay}")
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)
        self._source: tuple | None = None  # (model, its params, EMA params, buffers...) cache

    def current_decay(self) -> float:
        """beta for the next update."""
        if self.warmup:
            n = self.num_updates
            return min(self.decay, (1.0 + n) / (10.0 + n))
        return self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        beta = self.current_decay()
        if self._source is None or self._source[0] is not model:
            # Parameter lists are gathered once: walking the module tree every step costs more
            # than the averaging itself for small models.
            names = [n for n, _ in model.named_parameters()]
            ema_params = dict(self.module.named_parameters())
            self._source = (model, [p for _, p in model.named_parameters()],
                            [ema_params[n] for n in names],
                            [b for _, b in model.named_buffers()],
                            list(self.module.buffers()))
        _, src, dst, src_buffers, dst_buffers = self._source
        # lerp: ema + (1 - beta) * (p - ema), elementwise and deterministic
        torch._foreach_lerp_(dst, [p.detach() for p in src], 1.0 - beta)
        for d, b in zip(dst_buffers, src_buffers, strict=True):
            d.copy_(b)
        self.num_updates += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        return self.module.state_dict()

    def load_state_dict(self, state: dict[str, torch.Tensor], num_updates: int) -> None:
        self.module.load_state_dict(state)
        self.num_updates = int(num_updates)
