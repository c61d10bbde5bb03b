"""The conditional U-Net: shapes, gradients, determinism, conditioning semantics."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from pictor.networks.unet import UNet, UNetConfig, unet_presets

TINY = UNetConfig(in_channels=4, out_channels=4, channels=(16, 32), blocks_per_level=(1, 1),
                  attention_levels=(1,), head_dim=8, context_dim=12, zero_init_output=False,
                  zero_init_residual=False)


def inputs(cfg: UNetConfig, size: int = 8, batch: int = 2, length: int = 5, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, cfg.in_channels, size, size, generator=g)
    t = torch.rand(batch, generator=g) * 999
    context = (torch.randn(batch, length, cfg.context_dim, generator=g)
               if cfg.context_dim is not None else None)
    mask = torch.ones(batch, length, dtype=torch.bool)
    mask[0, 3:] = False
    return x, t, context, mask


@pytest.mark.parametrize("changes, size", [
    ({}, 8),
    ({"extra_up_block": True, "upsample": "conv"}, 8),
    ({"upsample": "nearest"}, 8),
    ({"channels": (8, 16, 16), "blocks_per_level": (1, 2, 1), "attention_levels": (0, 2),
      "mid_attention": False}, 16),
    ({"in_channels": 48, "out_channels": 48, "pooled_context": False}, 4),
    ({"context_dim": None, "attention_levels": ()}, 8),
    ({"out_channels": 8}, 8),  # e.g. predicting a learned variance beside the mean
    ({"position_frequencies": 4}, 8),
    ({"cross_attention_only_levels": (1,)}, 8),
])
def test_output_shape(changes, size):
    cfg = dataclasses.replace(TINY, **changes)
    x, t, context, mask = inputs(cfg, size)
    out = UNet(cfg)(x, t, context, mask if context is not None else None)
    assert out.shape == (2, cfg.out_channels, size, size)
    assert torch.isfinite(out).all()


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    model = UNet(TINY)
    x, t, context, mask = inputs(TINY)
    loss = model(x, t, context, mask).square().mean() + model(x, t, None, None).square().mean()
    loss.backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum()]
    assert not missing


def test_deterministic_given_seed_and_inputs():
    torch.manual_seed(1)
    a = UNet(TINY)
    torch.manual_seed(1)
    b = UNet(TINY)
    x, t, context, mask = inputs(TINY)
    assert torch.equal(a(x, t, context, mask), b(x, t, context, mask))
    assert torch.equal(a(x, t, context, mask), a(x, t, context, mask))


def test_channels_last_memory_format_gives_the_same_output():
    torch.manual_seed(0)
    model = UNet(TINY)
    x, t, context, mask = inputs(TINY)
    expected = model(x, t, context, mask)
    model = model.to(memory_format=torch.channels_last)
    out = model(x.contiguous(memory_format=torch.channels_last), t, context, mask)
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_zero_init_output_predicts_zeros():
    cfg = dataclasses.replace(TINY, zero_init_output=True)
    x, t, context, mask = inputs(cfg)
    out = UNet(cfg)(x, t, context, mask)
    assert torch.equal(out, torch.zeros_like(out))


def test_padding_tokens_do_not_change_the_output():
    torch.manual_seed(0)
    model = UNet(TINY)
    x, t, context, mask = inputs(TINY)
    garbage = context.clone()
    garbage[~mask] = 1e3 * torch.randn(int((~mask).sum()), TINY.context_dim)
    torch.testing.assert_close(model(x, t, garbage, mask), model(x, t, context, mask))
    # and the text matters: a different real token changes the output
    other = context.clone()
    other[:, 0] += 1.0
    assert not torch.allclose(model(x, t, other, mask), model(x, t, context, mask))


def test_timestep_matters_and_may_be_fractional():
    torch.manual_seed(0)
    model = UNet(TINY)
    x, _, context, mask = inputs(TINY)
    a = model(x, torch.tensor([10.0, 10.0]), context, mask)
    b = model(x, torch.tensor([10.5, 10.5]), context, mask)
    assert not torch.allclose(a, b)


def test_bad_inputs_raise_value_error():
    model = UNet(TINY)
    x, t, context, mask = inputs(TINY)
    with pytest.raises(ValueError, match="divisible"):
        model(torch.randn(2, 4, 7, 7), t, context, mask)
    with pytest.raises(ValueError, match="context must have shape"):
        model(x, t, context[..., :5], mask)
    with pytest.raises(ValueError, match="context_mask"):
        model(x, t, context, mask.float())
    with pytest.raises(ValueError, match="t must have shape"):
        model(x, t[:1], context, mask)


@pytest.mark.parametrize("changes, message", [
    ({"blocks_per_level": (1,)}, "blocks_per_level"),
    ({"attention_levels": (2,)}, "attention_levels"),
    ({"head_dim": 7}, "head_dim"),
    ({"channels": ()}, "channels"),
    ({"cross_attention_only_levels": (0,)}, "subset of attention_levels"),
])
def test_bad_config_raises_value_error(changes, message):
    with pytest.raises(ValueError, match=message):
        dataclasses.replace(TINY, **changes)


@pytest.mark.parametrize("name, size", [("shapes-small", 16), ("shapes-small-pixel", 16),
                                        ("shapes-small-f8", 8)])
def test_presets_are_small_models(name, size):
    cfg = unet_presets[name]
    model = UNet(cfg)
    num_params = sum(p.numel() for p in model.parameters())
    assert 4e6 <= num_params <= 8e6
    x = torch.randn(1, cfg.in_channels, size, size)
    out = model(x, torch.tensor([500.0]), torch.randn(1, 3, cfg.context_dim))
    assert out.shape == x.shape
    assert unet_presets["shapes-small"] == UNetConfig()


def test_fits_a_fixed_batch_despite_zero_init():
    """A few AdamW steps on one batch lower the loss a lot, with the zero-initialised output
    and residual branches of the default config (gradients reach them after the first step)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, zero_init_output=True, zero_init_residual=True)
    model = UNet(cfg)
    x, t, context, mask = inputs(cfg, batch=4)
    target = torch.randn_like(x)
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = (model(x, t, context, mask) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.3 * losses[0]


ADAPTED = dataclasses.replace(TINY, context_dim=16, text_adapter_layers=2)


def test_untrained_text_adapter_is_the_identity_and_prepared_context_is_the_same_pass():
    torch.manual_seed(0)
    model = UNet(ADAPTED)
    plain = UNet(dataclasses.replace(ADAPTED, text_adapter_layers=0))
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("text_adapter.") for k in unexpected)
    x, t, context, mask = inputs(ADAPTED)
    torch.testing.assert_close(model(x, t, context, mask), plain(x, t, context, mask))
    # trained (here: random) adapter weights change the output, padding still does not, and
    # running the adapter once up front gives the same pass
    for p in model.text_adapter.parameters():
        torch.nn.init.normal_(p, std=0.2)
    out = model(x, t, context, mask)
    assert not torch.allclose(out, plain(x, t, context, mask))
    garbage = context.clone()
    garbage[~mask] = 1e3
    torch.testing.assert_close(model(x, t, garbage, mask), out)
    prepared = model.prepare_context(context, mask)
    torch.testing.assert_close(model(x, t, prepared, mask, context_prepared=True), out)
    assert model(x, t, None, None).shape == out.shape  # the null token goes through it too


def test_text_adapter_config_errors():
    with pytest.raises(ValueError, match="divisible by head_dim"):
        dataclasses.replace(TINY, text_adapter_layers=1)  # context_dim 12, head_dim 8
    with pytest.raises(ValueError, match="text_adapter_layers"):
        dataclasses.replace(ADAPTED, text_adapter_layers=-1)
    with pytest.raises(ValueError, match="text_adapter_max_tokens"):
        dataclasses.replace(TINY, text_adapter_max_tokens=8)  # no adapter to give them to


def test_cross_attention_only_blocks_read_the_text_and_nothing_else():
    cfg = dataclasses.replace(TINY, cross_attention_only_levels=(1,))
    torch.manual_seed(0)
    model = UNet(cfg)
    blocks = [m for m in model.modules() if m.__class__.__name__ == "TransformerBlock"]
    light = [b for b in blocks if b.self_attn is None]
    assert light and all(b.mlp is None and b.cross_attn is not None for b in light)
    x, t, context, mask = inputs(cfg)
    other = context.clone()
    other[:, 0] += torch.randn(cfg.context_dim)
    assert not torch.allclose(model(x, t, other, mask), model(x, t, context, mask))
    full = sum(p.numel() for p in UNet(TINY).parameters())
    assert sum(p.numel() for p in model.parameters()) < full


def test_prompt_terms_and_inference_caches_give_the_same_pass():
    """Without autograd the U-Net reuses what does not depend on x and t (the position terms,
    the stacked scale-shift weights) and can take the per-prompt terms from prompt_terms; each
    gives the pass it replaces, and a change of the weights is seen."""
    cfg = dataclasses.replace(ADAPTED, position_frequencies=4, attention_levels=(0, 1),
                              cross_attention_only_levels=(0,))
    torch.manual_seed(0)
    model = UNet(cfg).eval()
    x, t, context, mask = inputs(cfg)
    layout = torch.randn(x.shape[0], context.shape[1], 8, 8)
    with torch.enable_grad():  # the reference: every term computed in the pass
        want = model(x, t, context, mask, layout=layout)
    with torch.no_grad():
        got = model(x, t, context, mask, layout=layout)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        prepared = model.prepare_context(context, mask)
        terms = model.prompt_terms(prepared, mask)
        kv_blocks = [m for m in model.modules() if m.__class__.__name__ == "CrossAttention"]
        assert len(terms) == 1 + len(kv_blocks)  # the pooled text, then keys and values
        plain = model(x, t, prepared, mask, context_prepared=True, layout=layout)
        assert torch.equal(plain, got)
        assert torch.equal(model(x, t, prepared, mask, context_prepared=True, layout=layout,
                                 prompt_terms=terms), plain)
        # with the layout, the terms also hold each cross-attention's mask
        with_masks = model.prompt_terms(prepared, mask, layout)
        assert len(with_masks) == 1 + 2 * len(kv_blocks)
        assert torch.equal(model(x, t, prepared, mask, context_prepared=True, layout=layout,
                                 prompt_terms=with_masks), plain)
        with pytest.raises(ValueError, match="need that layout"):
            model(x, t, prepared, mask, context_prepared=True, prompt_terms=with_masks)
        no_keys = mask.clone()
        no_keys[0] = False  # a row without a real key: no masks (the pass zeroes that row)
        assert len(model.prompt_terms(prepared, no_keys, layout)) == len(terms)
        # new weights are used: the cached terms follow an in-place update
        for p in [*model.parameters()]:
            p.add_(0.01 * torch.randn_like(p))
        changed = model(x, t, context, mask, layout=layout)
    with torch.enable_grad():
        torch.testing.assert_close(changed, model(x, t, context, mask, layout=layout),
                                   rtol=1e-6, atol=1e-6)
    assert not torch.allclose(changed, got)
    with pytest.raises(ValueError, match="context_prepared"):
        model(x, t, prepared, mask, prompt_terms=terms)
    with pytest.raises(ValueError, match="prompt_terms must be"):
        model(x, t, prepared, mask, context_prepared=True, prompt_terms=terms[:-1])
    with pytest.raises(ValueError, match="unconditional"):
        UNet(dataclasses.replace(TINY, context_dim=None, attention_levels=())).prompt_terms(
            context)
