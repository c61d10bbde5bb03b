"""A text-conditional VAE with a learned conditional prior (Sohn et al. 2015, "Learning
Structured Output Representation using Deep Conditional Generative Models", NeurIPS: the CVAE
with recognition network q(z|x,c), prior network p(z|c) and generation network p(x|z,c)).

Shapes: images x (B, 3, S, S) in [-1, 1] on the 8-bit grid, S = 4 * 2 ** (len(channels) - 1);
c (B, text_dim) the sentence embedding of the frozen text encoder
(pictor.networks.gan.sentence_embedding, the same condition the GAN sees); z (B, latent_dim).

    encoder  q(z | x, c) = N(mu_q, diag sigma_q^2):  convs down to 4x4, flatten, [h, c] -> MLP
    prior    p(z | c)    = N(mu_p, diag sigma_p^2):  MLP of c
    decoder  p(x | z, c):  fc(z) -> 4x4, upsampling blocks with affine fusion of [z, c] (the
             GAN generator's block, so both families spend their capacity alike), mean in
             [-1, 1] by tanh; a discretised Gaussian on the 8-bit grid around it with a learned
             log-scale per channel (pictor.networks.likelihood), so log p(x|z,c) is a
             probability and the ELBO is a lower bound on log P(x|c) in bits/dim.

    ELBO(x, c) = E_q[log p(x | z, c)] - KL(q(z | x, c) || p(z | c))   (Sohn et al. eq. 4),
    one reparameterised sample z = mu_q + sigma_q * eps (Kingma & Welling 2014).
Generation draws z ~ p(z | c) and shows the decoder's mean (not a pixel-noise sample), as
VAE papers do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from pictor.networks.gan import GeneratorBlock
from pictor.networks.likelihood import discretized_gaussian_log_likelihood, gaussian_kl


@dataclass
class VaeConfig:
    # Which model family a config describes (`pictor train` picks the trainer from it).
    family: Literal["vae"] = "vae"
    # Channels per resolution of the decoder, from 4x4 up (len - 1 upsamplings: 64x64 with 5);
    # the encoder uses them in reverse, from the image size down to 4x4.
    channels: list[int] = field(default_factory=lambda: [256, 256, 128, 64, 32])
    # Dimension of the latent z.
    latent_dim: int = 128
    # Dimension of the sentence embedding (384 for all-MiniLM-L6-v2).
    text_dim: int = 384
    # Hidden width of the prior MLP, the encoder head and the decoder's affine MLPs.
    hidden_dim: int = 256
    # Initial log standard deviation of the pixel likelihood (learned per channel); -1 is a
    # sigma of 0.37 on [-1, 1], a broad start that the data narrows.
    init_log_scale: float = -1.0

    @property
    def image_size(self) -> int:
        return 4 * 2 ** (len(self.channels) - 1)


@dataclass
class ElboTerms:
    """Per-example terms of the ELBO (nats, summed over dimensions), each (B,)."""

    log_likelihood: torch.Tensor  # E_q[log p(x | z, c)] (one sample)
    kl: torch.Tensor  # KL(q(z | x, c) || p(z | c)), closed form
    num_dims: int  # D = 3 * S * S

    def negative_elbo(self, kl_weight: float = 1.0) -> torch.Tensor:
        return -self.log_likelihood + kl_weight * self.kl  # (B,)


class ConditionalVAE(nn.Module):
    def __init__(self, config: VaeConfig) -> None:
        super().__init__()
        self.config = config
        ch = list(config.channels)
        if len(ch) < 2:
            raise ValueError("model.channels needs at least two levels (4x4 and 8x8)")
        enc = ch[::-1]                                              # image size down to 4x4
        layers: list[nn.Module] = [nn.Conv2d(3, enc[0], 3, padding=1)]
        for a, b in zip(enc[:-1], enc[1:], strict=True):
            layers += [nn.LeakyReLU(0.2), nn.Conv2d(a, b, 4, stride=2, padding=1)]
        layers.append(nn.LeakyReLU(0.2))
        self.encoder_convs = nn.Sequential(*layers)
        h, d, t = config.hidden_dim, config.latent_dim, config.text_dim
        self.encoder_head = nn.Sequential(nn.Linear(enc[-1] * 16 + t, h), nn.LeakyReLU(0.2),
                                          nn.Linear(h, 2 * d))
        self.prior_net = nn.Sequential(nn.Linear(t, h), nn.LeakyReLU(0.2), nn.Linear(h, h),
                                       nn.LeakyReLU(0.2), nn.Linear(h, 2 * d))
        self.fc = nn.Linear(d, ch[0] * 16)
        self.blocks = nn.ModuleList(GeneratorBlock(d + t, a, b, h)
                                    for a, b in zip(ch[:-1], ch[1:], strict=True))
        self.to_rgb = nn.Conv2d(ch[-1], 3, 3, padding=1)
        self.log_scale = nn.Parameter(torch.full((3,), float(config.init_log_scale)))

    def encode(self, x: torch.Tensor, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """q(z | x, c): (mean, logvar), each (B, latent_dim)."""
        h = self.encoder_convs(x).flatten(1)                        # (B, C * 16)
        mean, logvar = self.encoder_head(torch.cat([h, c], 1)).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def prior(self, c: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """p(z | c): (mean, logvar), each (B, latent_dim)."""
        mean, logvar = self.prior_net(c).chunk(2, dim=1)
        return mean, logvar.clamp(-20.0, 10.0)

    def decode(self, z: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """Mean of p(x | z, c), (B, 3, S, S) in [-1, 1]."""
        cond = torch.cat([z, c], 1)
        h = self.fc(z).view(z.shape[0], self.config.channels[0], 4, 4)
        for block in self.blocks:
            h = block(h, cond)
        return torch.tanh(self.to_rgb(F.leaky_relu(h, 0.2)))

    def elbo_terms(self, x: torch.Tensor, c: torch.Tensor, eps: torch.Tensor) -> ElboTerms:
        """The ELBO's two terms for images x (B, 3, S, S), conditions c (B, D) and the
        reparameterisation noise eps (B, latent_dim)."""
        mq, lq = self.encode(x, c)
        mp, lp = self.prior(c)
        z = mq + torch.exp(0.5 * lq) * eps
        mean = self.decode(z, c)
        log_scale = self.log_scale.view(1, 3, 1, 1).expand_as(mean)
        ll = discretized_gaussian_log_likelihood(x, mean, log_scale).flatten(1).sum(1)
        kl = gaussian_kl(mq, lq, mp, lp).sum(1)
        return ElboTerms(ll, kl, num_dims=x[0].numel())

    def sample(self, c: torch.Tensor, eps: torch.Tensor, temperature: float = 1.0
               ) -> torch.Tensor:
        """Images (B, 3, S, S): z = mu_p + temperature * sigma_p * eps, z ~ p(z | c)."""
        mp, lp = self.prior(c)
        return self.decode(mp + temperature * torch.exp(0.5 * lp) * eps, c)

    def forward(self, x: torch.Tensor, c: torch.Tensor, eps: torch.Tensor) -> ElboTerms:
        return self.elbo_terms(x, c, eps)

