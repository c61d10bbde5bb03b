"""A one-stage text-to-image GAN after DF-GAN (Tao et al. 2022, "DF-GAN: A Simple and Effective
Baseline for Text-to-Image Synthesis", CVPR; code/lib/modules.py of the official repository).

The GAN works on pixels (B, 3, S, S) in [-1, 1], S = 4 * 2 ** (len(channels) - 1): the usual
space of text-to-image GANs at 64x64, where DiffAugment's colour and geometry ops mean what they
say (docs/families.md states the choice). The condition is the *sentence embedding* s (B, D) of
the frozen text encoder: the mask-weighted mean of its token embeddings, L2-normalised
(`sentence_embedding`; all-MiniLM-L6-v2 is trained with exactly this pooling).

Generator (DF-GAN Sec. 3.1-3.2):
    h = fc([z, s]) -> (B, C0, 4, 4)
    per level: h = up2(h); h = shortcut(h) + gamma * conv(fuse(conv(fuse(h))))
    fuse(h) = LeakyReLU(Affine_2(LeakyReLU(Affine_1(h, [z, s])), [z, s]))   ("deep fusion")
    Affine(h, c) = gamma(c) * h + beta(c)          (channel-wise, gamma/beta two-layer MLPs)
    x = tanh(conv(LeakyReLU(h)))                    (B, 3, S, S)
Discriminator (DF-GAN Sec. 3.3, the "one-way" matching-aware output):
    f = D_blocks(x) -> (B, C, 4, 4)
    logit = conv4x4(LeakyReLU(conv3x3([f, tile(s)])))    (B,)
so one scalar judges realism and text-image match together; the matching-aware loss
(pictor.training.gan_losses) shows it real images with mismatched sentences as negatives.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn


@dataclass
class GanConfig:
    # Which model family a config describes (`pictor train` picks the trainer from it).
    family: Literal["gan"] = "gan"
    # Channels of the generator per resolution, from 4x4 up; len(channels) - 1 upsamplings, so
    # [256, 256, 128, 64, 32] makes 64x64 images (DF-GAN's ngf=32 layout, narrower at 4x4).
    generator_channels: list[int] = field(default_factory=lambda: [256, 256, 128, 64, 32])
    # Channels of the discriminator per resolution, from the image size down to 4x4 (same
    # number of levels as the generator).
    discriminator_channels: list[int] = field(default_factory=lambda: [32, 64, 128, 256, 256])
    # Dimension of the noise vector z ~ N(0, I) (DF-GAN: 100).
    noise_dim: int = 100
    # Dimension of the sentence embedding (384 for all-MiniLM-L6-v2).
    text_dim: int = 384
    # Hidden width of the affine MLPs that map [z, s] to per-channel gamma and beta.
    affine_hidden: int = 256

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.generator_channels) - 1)


def sentence_embedding(tokens: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of the real tokens' embeddings, L2-normalised: (B, L, D), (B, L) -> (B, D)."""
    m = mask.to(tokens.dtype).unsqueeze(-1)                       # (B, L, 1)
    mean = (tokens * m).sum(1) / m.sum(1).clamp(min=1.0)          # (B, D)
    return F.normalize(mean, dim=-1)


class Affine(nn.Module):
    """gamma(c) * h + beta(c), per channel; gamma starts at 1, beta at 0 (DF-GAN's Affine)."""

    def __init__(self, cond_dim: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.gamma = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                   nn.Linear(hidden, channels))
        self.beta = nn.Sequential(nn.Linear(cond_dim, hidden), nn.ReLU(),
                                  nn.Linear(hidden, channels))
        for head, bias in ((self.gamma[2], 1.0), (self.beta[2], 0.0)):
            nn.init.zeros_(head.weight)
            nn.init.constant_(head.bias, bias)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        return self.gamma(c)[:, :, None, None] * h + self.beta(c)[:, :, None, None]


class FusionBlock(nn.Module):
    """Two affine + LeakyReLU stages: the deep text-image fusion of one conv."""

    def __init__(self, cond_dim: int, channels: int, hidden: int) -> None:
        super().__init__()
        self.affine1 = Affine(cond_dim, channels, hidden)
        self.affine2 = Affine(cond_dim, channels, hidden)

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.leaky_relu(self.affine1(h, c), 0.2)
        return F.leaky_relu(self.affine2(h, c), 0.2)


class GeneratorBlock(nn.Module):
    """up2 -> [fuse -> conv3x3] x 2, plus a (1x1) shortcut: DF-GAN's G_Block."""

    def __init__(self, cond_dim: int, in_ch: int, out_ch: int, hidden: int) -> None:
        super().__init__()
        self.fuse1 = FusionBlock(cond_dim, in_ch, hidden)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.fuse2 = FusionBlock(cond_dim, out_ch, hidden)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, h: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(h, scale_factor=2, mode="nearest")          # (B, in, 2H, 2W)
        r = self.conv2(self.fuse2(self.conv1(self.fuse1(h, c)), c))   # (B, out, 2H, 2W)
        return self.shortcut(h) + r


class Generator(nn.Module):
    """G(z (B, noise_dim), s (B, text_dim)) -> images (B, 3, S, S) in [-1, 1]."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        self.config = config
        ch = list(config.generator_channels)
        if len(ch) < 2:
            raise ValueError("model.generator_channels needs at least two levels (4x4 and 8x8)")
        cond = config.noise_dim + config.text_dim
        self.fc = nn.Linear(config.noise_dim, ch[0] * 16)
        self.blocks = nn.ModuleList(GeneratorBlock(cond, a, b, config.affine_hidden)
                                    for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.to_rgb = nn.Conv2d(ch[-1], 3, 3, padding=1)

    def forward(self, z: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        c = torch.cat([z, s], dim=1)                                          # (B, nz + D)
        h = self.fc(z).view(z.shape[0], self.config.generator_channels[0], 4, 4)
        for block in self.blocks:
            h = block(h, c)
        return torch.tanh(self.to_rgb(F.leaky_relu(h, 0.2)))                  # (B, 3, S, S)


class DiscriminatorBlock(nn.Module):
    """conv4x4/2 -> LReLU -> conv3x3 -> LReLU, plus avg-pool + 1x1 shortcut (DF-GAN's D_Block,
    the residual branch scaled by a learned gamma that starts at 0)."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.shortcut = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()
        self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = F.leaky_relu(self.conv2(F.leaky_relu(self.conv1(x), 0.2)), 0.2)
        return self.shortcut(F.avg_pool2d(x, 2)) + self.gamma * r


class Discriminator(nn.Module):
    """D(x (B, 3, S, S), s (B, text_dim)) -> logits (B,): realism and match in one number."""

    def __init__(self, config: GanConfig) -> None:
        super().__init__()
        ch = list(config.discriminator_channels)
        if len(ch) != len(config.generator_channels):
            raise ValueError("model.discriminator_channels must have as many levels as "
                             "model.generator_channels (one per resolution)")
        self.from_rgb = nn.Conv2d(3, ch[0], 3, padding=1)
        self.blocks = nn.ModuleList(DiscriminatorBlock(a, b)
                                    for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.joint = nn.Conv2d(ch[-1] + config.text_dim, ch[-1] * 2, 3, padding=1)
        self.logit = nn.Conv2d(ch[-1] * 2, 1, 4)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = self.from_rgb(x)
        for block in self.blocks:
            h = block(h)
        return h                                                              # (B, C, 4, 4)

    def forward(self, x: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        tiled = s[:, :, None, None].expand(-1, -1, h.shape[2], h.shape[3])    # (B, D, 4, 4)
        h = F.leaky_relu(self.joint(torch.cat([h, tiled], dim=1)), 0.2)
        return self.logit(h).flatten()                                        # (B,)


class GanPair(nn.Module):
    """Generator and discriminator as one module: one optimizer (two parameter groups, each
    with its own learning rate), one checkpoint and one EMA for the training loop; sampling uses
    the EMA generator alone."""

    def __init__(self, config: GanConfig, generator_lr_scale: float = 1.0,
                 discriminator_lr_scale: float = 1.0) -> None:
        super().__init__()
        self.config = config
        self.generator = Generator(config)
        self.discriminator = Discriminator(config)
        self.lr_scales = (generator_lr_scale, discriminator_lr_scale)

    def optimizer_groups(self) -> list[dict]:
        """Parameter groups for the optimizer; `lr_scale` multiplies the scheduled lr."""
        g, d = self.lr_scales
        return [{"params": list(self.generator.parameters()), "lr_scale": g},
                {"params": list(self.discriminator.parameters()), "lr_scale": d}]
