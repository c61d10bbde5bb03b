"""DiffAugment's ops against closed forms: translation with zero padding moves every pixel by
exactly the shift, cutout zeroes exactly its box, brightness adds one value everywhere,
saturation and contrast scale around the right means; one draw of parameters applies
identically to several tensors, and gradients reach the input."""

from __future__ import annotations

import pytest
import torch

from pictor.training.diffaugment import (
    augment,
    cutout_mask,
    draw_params,
    parse_policy,
    translate,
)


def images(b: int = 3, size: int = 8, seed: int = 0) -> torch.Tensor:
    return torch.rand((b, 3, size, size), generator=torch.Generator().manual_seed(seed)) * 2 - 1


@pytest.mark.parametrize("dy,dx", [(0, 0), (1, 2), (-2, 1), (3, -3), (-1, -1)])
def test_translation_moves_pixels_by_exactly_the_shift(dy, dx):
    x = images(1)
    out = translate(x, torch.tensor([[dy, dx]]))
    h = w = x.shape[-1]
    for i in range(h):
        for j in range(w):
            si, sj = i - dy, j - dx
            want = x[0, :, si, sj] if 0 <= si < h and 0 <= sj < w else torch.zeros(3)
            assert torch.equal(out[0, :, i, j], want), (i, j)


def test_translation_is_per_example():
    x = images(2)
    out = translate(x, torch.tensor([[1, 0], [0, -1]]))
    assert torch.equal(out[0], translate(x[:1], torch.tensor([[1, 0]]))[0])
    assert torch.equal(out[1], translate(x[1:], torch.tensor([[0, -1]]))[0])


def test_cutout_zeroes_exactly_its_box():
    size, side = 8, 4  # CUTOUT_RATIO 0.5
    mask = cutout_mask(torch.tensor([[3, 5], [0, 0], [7, 7]]), size)
    for b, (cy, cx) in enumerate([(3, 5), (0, 0), (7, 7)]):
        top, left = cy - side // 2, cx - side // 2
        want = torch.ones(size, size)
        want[max(top, 0):top + side, max(left, 0):left + side] = 0
        assert torch.equal(mask[b, 0], want), b
    x = images(3)
    out = augment(x, {"cutout": torch.tensor([[3, 5], [0, 0], [7, 7]])})
    assert torch.equal(out, x * mask)
    assert int((mask[0] == 0).sum()) == side * side  # an inner box is whole


def test_brightness_adds_the_same_value_everywhere():
    x = images(2)
    b = torch.tensor([0.25, -0.4])
    out = augment(x, {"brightness": b})
    assert torch.allclose(out - x, b[:, None, None, None].expand_as(x), atol=1e-6)


def test_saturation_and_contrast_closed_forms():
    x = images(2)
    s = torch.tensor([0.0, 1.5])
    out = augment(x, {"saturation": s})
    grey = x.mean(1, keepdim=True)
    assert torch.allclose(out[0], grey[0].expand(3, -1, -1), atol=1e-6)  # s = 0: grey
    assert torch.allclose(out[1], (x[1] - grey[1]) * 1.5 + grey[1], atol=1e-6)
    k = torch.tensor([1.0, 0.5])
    out = augment(x, {"contrast": k})
    assert torch.allclose(out[0], x[0], atol=1e-6)                         # k = 1: unchanged
    m = x[1].mean()
    assert torch.allclose(out[1], (x[1] - m) * 0.5 + m, atol=1e-6)
    assert torch.allclose(out[1].mean(), m, atol=1e-6)                     # the mean is kept


def test_one_draw_applies_identically_to_a_pair_and_draws_differ():
    ops = parse_policy("color,translation,cutout")
    params = draw_params(ops, 3, 8, torch.Generator().manual_seed(1))
    assert list(params) == ["brightness", "saturation", "contrast", "translation", "cutout"]
    x = images(3)
    assert torch.equal(augment(x, params), augment(x.clone(), params))
    again = draw_params(ops, 3, 8, torch.Generator().manual_seed(1))
    assert all(torch.equal(params[k], again[k]) for k in params)  # seeded: reproducible
    other = draw_params(ops, 3, 8, torch.Generator().manual_seed(2))
    assert not torch.equal(augment(x, params), augment(x, other))
    r = params["translation"]
    assert int(r.abs().max()) <= 1  # round(8 / 8)


def test_gradients_reach_the_input():
    x = images(2).requires_grad_(True)
    params = draw_params(parse_policy("color,translation,cutout"), 2, 8,
                         torch.Generator().manual_seed(3))
    augment(x, params).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_unknown_policy_is_a_clear_error():
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        parse_policy("color,rotation")
    assert parse_policy("") == ()
