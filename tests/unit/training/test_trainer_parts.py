"""Pieces of the trainers against closed forms: learning-rate schedule, precision, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from pictor.training.autoencoder import image_gradients
from pictor.training.loop import autocast_dtype, lr_at


def test_lr_warmup_then_constant_or_cosine():
    assert [lr_at(s, 1.0, 4, 100) for s in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    assert lr_at(0, 0.1, 0, 10) == 0.1
    # cosine from lr at the end of warm-up to min_lr_ratio * lr at max_steps
    cos = [lr_at(s, 2.0, 10, 110, "cosine", 0.1) for s in (10, 60, 110)]
    assert cos == [pytest.approx(2.0), pytest.approx(2.0 * (0.1 + 0.9 * 0.5)), pytest.approx(0.2)]
    s = 35
    expected = 2.0 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 10) / 100)))
    assert lr_at(s, 2.0, 10, 110, "cosine", 0.1) == pytest.approx(expected)


def test_autocast_dtype():
    from pictor.hardware import cpu_has_native_bf16

    cpu = torch.device("cpu")
    # auto: bf16 only where the CPU computes it natively (else it is emulated, ~3x slower)
    assert autocast_dtype("auto", cpu) == (torch.bfloat16 if cpu_has_native_bf16() else None)
    assert autocast_dtype("no", cpu) is None
    assert autocast_dtype("bf16", cpu) == torch.bfloat16
    with pytest.raises(ValueError, match="fp16 needs a CUDA device"):
        autocast_dtype("fp16", cpu)


def test_image_gradients():
    x = torch.arange(12.0).reshape(1, 1, 3, 4)  # x[h, w] = 4h + w
    gx, gy = image_gradients(x)
    assert gx.shape == (1, 1, 3, 3) and torch.all(gx == 1)
    assert gy.shape == (1, 1, 2, 4) and torch.all(gy == 4)
