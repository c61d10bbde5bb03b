"""KL-regularised convolutional autoencoder for latent diffusion (Rombach et al. 2022, Sec. 3 and
App. G; the "AutoencoderKL" of Stable Diffusion, made small).

    encode: x (B, 3, H, W) in [-1, 1] -> posterior q(z | x) = N(mean, diag(exp(logvar)))
            mean, logvar: (B, latent_channels, H / f, W / f),  f = 2^(len(channels) - 1)
    decode: z (B, latent_channels, H / f, W / f) -> x_hat (B, 3, H, W)

Diffusion runs on `mean * scaling_factor` (the posterior mean, scaled to about unit variance;
`scaling_factor` = 1 / std of the training latents, set after the autoencoder is trained, as
SD's 0.18215 was). For 64 x 64 images: channels of length 3 give 16 x 16 latents (f = 4), length
4 give 8 x 8 (f = 8).

Layout of the encoder (the decoder mirrors it):
    conv_in -> per level: blocks_per_level ResBlocks, stride-2 Downsample (not after the last)
            -> mid ResBlock -> GroupNorm, SiLU, conv_out to 2 * latent_channels (mean, logvar)
No attention: at these sizes the receptive field of the convolutions covers the image, and
attention at 16 x 16 or 32 x 32 would dominate the cost.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from pictor.networks.layers import (
    NORM_KINDS,
    UPSAMPLE_MODES,
    Conv2d,
    Downsample,
    NormKind,
    ResBlock,
    Upsample,
    UpsampleMode,
    norm_layer,
)


@dataclass(frozen=True)
class AutoencoderConfig:
    # Image channels (RGB).
    in_channels: int = 3
    # Channels of the latent z (4 as in SD).
    latent_channels: int = 4
    # Encoder width per level (the decoder uses them in reverse). The spatial downsampling factor
    # is 2^(len(channels) - 1): (32, 64, 128) -> 64x64 images to 16x16 latents.
    channels: tuple[int, ...] = (32, 64, 128)
    # ResBlocks per level in the encoder; the decoder has the same number (LDM uses one more).
    blocks_per_level: int = 1
    # Upper bound on GroupNorm groups.
    max_norm_groups: int = 32
    # The normalisation of every block: "group" (GroupNorm, LDM's; statistics over all pixels of
    # a group) or "channel" (each pixel's channels alone, pictor.networks.layers.ChannelNorm).
    # Under GroupNorm a decoder can learn a bright spot that steers the statistics, which then
    # shows in every image (StyleGAN2's "droplet"; the emoji autoencoder drew one in a corner).
    norm: NormKind = "group"
    # How the decoder doubles the resolution (pictor.networks.layers.Upsample). LDM's "conv"
    # (nearest + 3x3 conv at the high resolution, wide channels) costs ~40% of the decoder's
    # FLOPs; "project" maps to the next level's width with a 1x1 conv at the low resolution first.
    upsample: UpsampleMode = "project"
    # Multiply posterior means by this before diffusion (1 / std of the training latents; 1.0
    # until measured on data after training).
    scaling_factor: float = 1.0

    def __post_init__(self) -> None:
        if not self.channels or any(c <= 0 for c in self.channels):
            raise ValueError(f"channels must be a non-empty tuple of positive ints, got "
                             f"{self.channels}")
        if self.blocks_per_level < 1:
            raise ValueError(f"blocks_per_level must be >= 1, got {self.blocks_per_level}")
        if self.latent_channels < 1 or self.in_channels < 1:
            raise ValueError("in_channels and latent_channels must be >= 1")
        if self.norm not in NORM_KINDS:
            raise ValueError(f"norm must be one of {NORM_KINDS}, got {self.norm!r}")
        if self.upsample not in UPSAMPLE_MODES:
            raise ValueError(f"upsample must be one of {UPSAMPLE_MODES}, got {self.upsample!r}")
        if not self.scaling_factor > 0:
            raise ValueError(f"scaling_factor must be > 0, got {self.scaling_factor}")

    @property
    def downsampling_factor(self) -> int:
        return 2 ** (len(self.channels) - 1)


def kl_divergence(mean: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(logvar)) || N(0, I)) per sample, summed over latent dimensions
    (Kingma & Welling 2014, App. B):  0.5 * sum(mean^2 + exp(logvar) - 1 - logvar).

    mean, logvar: (B, C, h, w) -> (B,)
    """
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Reparameterisation z = mean + exp(logvar / 2) * eps, eps ~ N(0, I) (Kingma & Welling 2014,
    Eq. 10). eps is drawn with `generator` on its device (CPU generator -> CPU noise, moved)."""
    gen_device = generator.device if generator is not None else mean.device
    eps = torch.randn(mean.shape, generator=generator, device=gen_device, dtype=mean.dtype)
    return mean + torch.exp(0.5 * logvar) * eps.to(mean.device)


class _Encoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        ch, g = cfg.channels, cfg.max_norm_groups
        self.conv_in = Conv2d(cfg.in_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = []
        c_prev = ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(c_prev, c, max_groups=g, norm=cfg.norm))
                c_prev = c
            if i < len(ch) - 1:
                layers.append(Downsample(c))
        layers.append(ResBlock(c_prev, c_prev, max_groups=g, norm=cfg.norm))  # mid
        self.body = nn.Sequential(*layers)
        self.norm_out = norm_layer(cfg.norm, c_prev, g)
        self.conv_out = Conv2d(c_prev, 2 * cfg.latent_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(x))
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, 2 * latent_channels, h, w)


class _Decoder(nn.Module):
    def __init__(self, cfg: AutoencoderConfig) -> None:
        super().__init__()
        ch, g = tuple(reversed(cfg.channels)), cfg.max_norm_groups
        self.conv_in = Conv2d(cfg.latent_channels, ch[0], 3, padding=1)
        layers: list[nn.Module] = [ResBlock(ch[0], ch[0], max_groups=g, norm=cfg.norm)]  # mid
        c_prev = ch[0]
        for i, c in enumerate(ch):
            for _ in range(cfg.blocks_per_level):
                layers.append(ResBlock(c_prev, c, max_groups=g, norm=cfg.norm))
                c_prev = c
            if i < len(ch) - 1:
                up = Upsample(c, ch[i + 1] if cfg.upsample == "project" else c, mode=cfg.upsample)
                layers.append(up)
                c_prev = up.out_channels
        self.body = nn.Sequential(*layers)
        self.norm_out = norm_layer(cfg.norm, c_prev, g)
        self.conv_out = Conv2d(c_prev, cfg.in_channels, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.body(self.conv_in(z))
        return self.conv_out(F.silu(self.norm_out(h)))  # (B, in_channels, H, W)


class AutoencoderKL(nn.Module):
    """encode(x) -> (mean, logvar); decode(z) -> x_hat; forward(x) -> (x_hat, mean, logvar)."""

    def __init__(self, config: AutoencoderConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else AutoencoderConfig()
        self.encoder = _Encoder(self.config)
        self.decoder = _Decoder(self.config)

    @property
    def scaling_factor(self) -> float:
        return self.config.scaling_factor

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x: (B, 3, H, W) in [-1, 1] -> mean, logvar: (B, latent_channels, H / f, W / f)."""
        f = self.config.downsampling_factor
        if x.ndim != 4 or x.shape[1] != self.config.in_channels or x.shape[2] % f or \
                x.shape[3] % f:
            raise ValueError(f"x must be (B, {self.config.in_channels}, H, W) with H and W "
                             f"divisible by {f}; got {tuple(x.shape)}")
        mean, logvar = self.encoder(x).chunk(2, dim=1)
        # Clamp as LDM's DiagonalGaussianDistribution does, so exp(logvar) stays finite.
        return mean, logvar.clamp(-30.0, 20.0)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z: (B, latent_channels, h, w) (unscaled) -> x_hat: (B, 3, h * f, w * f)."""
        if z.ndim != 4 or z.shape[1] != self.config.latent_channels:
            raise ValueError(f"z must be (B, {self.config.latent_channels}, h, w), got "
                             f"{tuple(z.shape)}")
        return self.decoder(z)

    def forward(self, x: torch.Tensor, sample: bool = True,
                generator: torch.Generator | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Reconstruct x through a posterior sample (or the mean when sample=False)."""
        mean, logvar = self.encode(x)
        z = sample_posterior(mean, logvar, generator) if sample else mean
        return self.decode(z), mean, logvar
