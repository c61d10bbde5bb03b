"""The learned layout prior (pictor.networks.layout_prior) and how the U-Net applies it."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from pictor.networks.layout_prior import LayoutPrior
from pictor.networks.unet import UNet, UNetConfig

CFG = UNetConfig(in_channels=3, out_channels=3, channels=(16, 32), blocks_per_level=(1, 1),
                 attention_levels=(0, 1), mid_attention=False, head_dim=8, context_dim=16,
                 time_embed_dim=32, max_norm_groups=8, layout_prior_width=8,
                 layout_prior_heads=2, layout_prior_max_tokens=8, layout_prior_size=8,
                 layout_prior_min_t=300)


def inputs(batch=2, length=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, 8, 8, generator=g)
    context = torch.randn(batch, length, 16, generator=g)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[-1, 3:] = False
    return x, context, mask


def randomise(module):
    for p in module.parameters():
        torch.nn.init.normal_(p, std=0.3)


def test_an_untrained_prior_adds_nothing():
    torch.manual_seed(0)
    model = UNet(CFG)
    plain = UNet(dataclasses.replace(CFG, layout_prior_width=0))
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("layout_prior.") for k in unexpected)
    x, context, mask = inputs()
    assert torch.equal(model.layout_prior_bias(context, mask), torch.zeros(2, 5, 8, 8))
    for t in (999.0, 10.0):
        tt = torch.full((2,), t)
        torch.testing.assert_close(model(x, tt, context, mask), plain(x, tt, context, mask))


def test_bias_is_the_clamped_scaled_log_density_ratio():
    prior = LayoutPrior(16, 8, 1, 2, max_tokens=8, size=4, strength=10.0, clamp=3.0)
    logits = torch.randn(2, 3, 4, 4) * 4
    q = torch.softmax(logits.flatten(2), -1).reshape(logits.shape)
    want = 10.0 * torch.log(16 * q).clamp(-3.0, 3.0)
    torch.testing.assert_close(prior.bias_from_logits(logits), want)
    # a uniform prediction is no bias at all
    assert torch.equal(prior.bias_from_logits(torch.zeros(1, 2, 4, 4)), torch.zeros(1, 2, 4, 4))


def test_forward_applies_the_prior_on_high_noise_examples_only_as_a_sampler_does():
    torch.manual_seed(0)
    model = UNet(CFG)
    for p in model.parameters():  # a "trained" network: every branch has an output
        torch.nn.init.normal_(p, std=0.1)
    randomise(model.layout_prior)
    x, context, mask = inputs()
    t = torch.tensor([999.0, 100.0])
    out = model(x, t, context, mask)
    bias = model.layout_prior_bias(context, mask)
    assert bias.abs().max() > 1.0
    prepared = model.prepare_context(context, mask)
    # the high-noise example gets the bias (as a sampler passes it), the other one does not
    with_bias = model(x, t, prepared, mask, context_prepared=True, layout=bias)
    without = model(x, t, prepared, mask, context_prepared=True)
    torch.testing.assert_close(out[0], with_bias[0])
    torch.testing.assert_close(out[1], without[1])
    assert not torch.allclose(with_bias[0], without[0], atol=1e-4)


def test_the_prior_reads_word_order():
    torch.manual_seed(0)
    prior = LayoutPrior(16, 8, 2, 2, max_tokens=8, size=4, strength=10.0, clamp=3.0)
    randomise(prior)
    _, context, _ = inputs(1)
    swapped = context[:, [2, 1, 0, 3, 4]]
    # the same words in another order: the first and third words' maps do not just trade places
    a, b = prior(context, None), prior(swapped, None)
    assert not torch.allclose(a[:, [2, 1, 0, 3, 4]], b, atol=1e-3)


def test_config_errors():
    with pytest.raises(ValueError, match="divisible by layout_prior_heads"):
        dataclasses.replace(CFG, layout_prior_width=9)
    with pytest.raises(ValueError, match="multiple of"):
        dataclasses.replace(CFG, layout_prior_size=7)
    model = UNet(dataclasses.replace(CFG, layout_prior_size=16))
    x, context, mask = inputs()
    with pytest.raises(ValueError, match="covers 16x16 inputs"):
        model(x, torch.full((2,), 999.0), context, mask)


def test_layout_prior_loss_closed_forms():
    from pictor.training.grounding import layout_prior_loss

    s = 4
    masks = torch.zeros(1, 2, s, s)
    masks[0, 0, :, :2] = 1.0  # object 0 fills the left half
    masks[0, 1, 0, 3] = 0.5   # object 1: one pixel, half covered
    tokens = torch.tensor([[1, 3, -1]])
    entity = torch.tensor([[0, 1, 0]])
    token_mask = torch.tensor([[True, True, True, True, False]])
    # the exact targets as logits: token 1 -> left half, token 3 -> one pixel (as far as finite
    # logits go), tokens 0 and 2 uniform, token 4 padding (anything)
    logits = torch.zeros(1, 5, s, s)
    logits[0, 1, :, 2:] = -1e4
    logits[0, 3] = -1e4
    logits[0, 3, 0, 3] = 0.0
    logits[0, 4] = torch.randn(s, s)
    assert float(layout_prior_loss(logits, token_mask, tokens, entity, masks)) == pytest.approx(
        0.0, abs=1e-6)
    # uniform everywhere: KL(left half || uniform) = log 2 and KL(one pixel || uniform) = log 16
    # for the grounded tokens (mean), 0 for the others
    uniform = torch.zeros(1, 5, s, s)
    got = float(layout_prior_loss(uniform, token_mask, tokens, entity, masks))
    assert got == pytest.approx((math.log(2) + math.log(16)) / 2, rel=1e-5)
    # a dropped caption: no grounded token, every real token's target is uniform
    keep = torch.tensor([False])
    assert float(layout_prior_loss(uniform, token_mask, tokens, entity, masks, keep)) == 0.0
