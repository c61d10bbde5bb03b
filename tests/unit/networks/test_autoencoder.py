"""KL autoencoder: shapes for both latent sizes, the KL term against its closed form."""

from __future__ import annotations

import math

import pytest
import torch

from pictor.networks.autoencoder import (
    AutoencoderConfig,
    AutoencoderKL,
    kl_divergence,
    sample_posterior,
)


@pytest.mark.parametrize("upsample", ["project", "conv", "nearest"])
@pytest.mark.parametrize("channels, latent_size", [((8, 16, 16), 16), ((8, 8, 16, 16), 8)])
def test_round_trip_shapes(channels, latent_size, upsample):
    cfg = AutoencoderConfig(channels=channels, latent_channels=4, upsample=upsample)
    model = AutoencoderKL(cfg)
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    mean, logvar = model.encode(x)
    assert mean.shape == logvar.shape == (2, 4, latent_size, latent_size)
    assert model.decode(mean).shape == x.shape
    recon, mean2, _ = model(x, sample=False)
    assert recon.shape == x.shape and torch.equal(mean, mean2)
    assert cfg.downsampling_factor == 64 // latent_size


def test_default_config_gives_16x16x4_latents():
    model = AutoencoderKL()
    mean, _ = model.encode(torch.zeros(1, 3, 64, 64))
    assert mean.shape == (1, 4, 16, 16)
    assert model.scaling_factor == 1.0


def test_kl_closed_form_and_nonnegative():
    shape = (2, 4, 3, 3)
    n = 4 * 3 * 3
    # mean 1, variance 1: 0.5 * (1 + 1 - 1 - 0) = 0.5 per dimension
    kl = kl_divergence(torch.ones(shape), torch.zeros(shape))
    torch.testing.assert_close(kl, torch.full((2,), 0.5 * n))
    # mean 0, variance 2: 0.5 * (2 - 1 - log 2) per dimension
    kl = kl_divergence(torch.zeros(shape), torch.full(shape, math.log(2.0)))
    torch.testing.assert_close(kl, torch.full((2,), 0.5 * n * (1 - math.log(2.0))))
    # the prior itself: 0
    assert torch.equal(kl_divergence(torch.zeros(shape), torch.zeros(shape)), torch.zeros(2))
    g = torch.Generator().manual_seed(0)
    kl = kl_divergence(torch.randn(shape, generator=g), 3 * torch.randn(shape, generator=g))
    assert (kl >= 0).all()


def test_reparameterised_samples_have_the_posterior_moments():
    mean = torch.full((1, 1, 100, 100), 2.0)
    logvar = torch.full((1, 1, 100, 100), math.log(0.25))
    z = sample_posterior(mean, logvar, torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(2.0, abs=0.02)
    assert z.std().item() == pytest.approx(0.5, abs=0.02)
    z2 = sample_posterior(mean, logvar, torch.Generator().manual_seed(0))
    assert torch.equal(z, z2)


def test_bad_input_raises_value_error():
    model = AutoencoderKL(AutoencoderConfig(channels=(8, 8)))
    with pytest.raises(ValueError, match="divisible"):
        model.encode(torch.zeros(1, 3, 63, 63))
    with pytest.raises(ValueError, match="z must be"):
        model.decode(torch.zeros(1, 3, 8, 8))
    with pytest.raises(ValueError, match="scaling_factor"):
        AutoencoderConfig(scaling_factor=0.0)


def test_channel_norm_normalises_each_pixel_over_its_channels():
    from pictor.networks.layers import ChannelNorm

    norm = ChannelNorm(6)
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 7.0))
        norm.bias.copy_(torch.full((6,), 0.5))
    x = torch.randn(2, 6, 5, 7, generator=torch.Generator().manual_seed(0)) * 3 + 1
    mean = x.mean(1, keepdim=True)
    var = x.var(1, unbiased=False, keepdim=True)
    expected = (x - mean) / torch.sqrt(var + 1e-6) * norm.weight.view(1, 6, 1, 1) + 0.5
    torch.testing.assert_close(norm(x), expected)


@pytest.mark.parametrize("norm, local", [("channel", True), ("group", False)])
def test_channel_norm_keeps_the_decoder_local(norm, local):
    """With ChannelNorm a latent pixel changes only the output pixels within the decoder's
    receptive field; GroupNorm's statistics over all pixels carry it to every pixel (how a
    decoder can draw a spot in a corner that steers the whole image)."""
    torch.manual_seed(0)
    cfg = AutoencoderConfig(channels=(8, 16), latent_channels=4, norm=norm)
    model = AutoencoderKL(cfg).eval()
    z = torch.randn(1, 4, 16, 16)
    z2 = z.clone()
    z2[0, :, 0, 15] += 5.0  # the top-right latent pixel
    with torch.no_grad():
        change = (model.decode(z2) - model.decode(z)).abs().amax(1)[0]  # (32, 32)
    far = change[16:, :16]  # bottom-left quarter: outside any 3x3-conv receptive field here
    assert change[:2, -2:].min() > 1e-3
    assert (far.max() == 0) if local else (far.max() > 1e-4)


def test_norm_kind_is_checked():
    with pytest.raises(ValueError, match="norm must be one of"):
        AutoencoderConfig(norm="batch")
