"""training.high_noise_fraction: that share of each batch draws t from the high-noise end;
0 leaves the draws exactly as they were."""

from __future__ import annotations

import pytest
import torch
from train_support import MICRO_MODEL, shared_data, tiny_config

from pictor.config import validate
from pictor.training.distributed import DistInfo
from pictor.training.trainer import DiffusionTask


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def task(data, path, *overrides):
    return DiffusionTask(tiny_config(*data, path, *MICRO_MODEL, *overrides), DistInfo())


def test_high_noise_share_of_timesteps(data, tmp_path):
    plain = task(data, tmp_path / "a")
    off = task(data, tmp_path / "b", "--training.high_noise_fraction=0")
    a, b = (t.draw(64, torch.Generator().manual_seed(3)) for t in (plain, off))
    assert all(torch.equal(a[k], b[k]) for k in a)  # fraction 0: the same draws as before

    high = task(data, tmp_path / "c", "--training.high_noise_fraction=1",
                "--training.high_noise_min_t=900")
    t = high.draw(4096, torch.Generator().manual_seed(0))["t"]
    assert int(t.min()) >= 900 and int(t.max()) <= 999

    half = task(data, tmp_path / "d", "--training.high_noise_fraction=0.5",
                "--training.high_noise_min_t=500")
    t = half.draw(20000, torch.Generator().manual_seed(0))["t"]
    # P(t >= 500) = 0.5 + 0.5 * 0.5 = 0.75 (binomial sd ~0.003)
    assert float((t >= 500).float().mean()) == pytest.approx(0.75, abs=0.015)


@pytest.mark.parametrize("override, message", [
    ("--training.high_noise_fraction=1.5", "high_noise_fraction"),
    ("--training.high_noise_min_t=1000", "high_noise_min_t"),
])
def test_bad_high_noise_settings_are_refused(data, tmp_path, override, message):
    with pytest.raises(ValueError, match=message):
        validate(tiny_config(*data, tmp_path / "x", override))
