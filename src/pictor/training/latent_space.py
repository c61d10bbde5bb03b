"""The diffusion space of a training run: maps a `LatentSpaceConfig` onto
`pictor.networks.codec.build_codec` (pixels, pixel-unshuffled pixels or autoencoder latents; the
maths and the `LatentCodec` type live there so the sampling pipeline can use them too).
"""

from __future__ import annotations

import torch

from pictor.config import LatentSpaceConfig
from pictor.networks.codec import LatentCodec, build_codec

__all__ = ["LatentCodec", "build_latent_codec"]


def build_latent_codec(config: LatentSpaceConfig, device: torch.device | str = "cpu"
                       ) -> LatentCodec:
    return build_codec(config.kind, pixel_unshuffle_factor=config.pixel_unshuffle_factor,
                       autoencoder_path=config.autoencoder_path, device=device)
