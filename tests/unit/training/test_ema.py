"""EMA against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from pictor.training.ema import EMA, ema_decay_from_halflife


def test_halflife_closed_form():
    beta = ema_decay_from_halflife(100)
    assert beta**100 == pytest.approx(0.5, rel=1e-12)
    with pytest.raises(ValueError):
        ema_decay_from_halflife(0)


def test_constant_decay_matches_closed_form():
    # theta_ema after n updates toward a constant target c from theta_0:
    # c + beta**n * (theta_0 - c)
    model = torch.nn.Linear(3, 1, bias=False)
    torch.nn.init.zeros_(model.weight)
    ema = EMA(model, decay=0.9, warmup=False)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(7):
        ema.update(model)
    expected = 1.0 - 0.9**7
    assert torch.allclose(ema.module.weight, torch.full((1, 3), expected), atol=1e-6)
    assert ema.num_updates == 7
    assert not ema.module.weight.requires_grad


def test_warmup_ramp():
    model = torch.nn.Linear(1, 1)
    ema = EMA(model, decay=0.999, warmup=True)
    decays = []
    for _ in range(3):
        decays.append(ema.current_decay())
        ema.update(model)
    assert decays == [pytest.approx(1 / 10), pytest.approx(2 / 11), pytest.approx(3 / 12)]
    ema.num_updates = 10**6
    assert ema.current_decay() == 0.999


def test_halflife_overrides_decay_and_state_round_trip():
    model = torch.nn.Linear(2, 2)
    ema = EMA(model, decay=0.5, halflife_steps=10, warmup=False)
    assert ema.decay == pytest.approx(math.exp(math.log(0.5) / 10))
    with torch.no_grad():
        model.weight.add_(1.0)
    ema.update(model)
    other = EMA(torch.nn.Linear(2, 2), halflife_steps=10, warmup=False)
    other.load_state_dict(ema.state_dict(), ema.num_updates)
    for a, b in zip(ema.module.parameters(), other.module.parameters(), strict=True):
        assert torch.equal(a, b)
    assert other.num_updates == 1
