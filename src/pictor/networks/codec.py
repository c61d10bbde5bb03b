"""The space diffusion runs in: pixels (optionally pixel-unshuffled) or autoencoder latents.

A `LatentCodec` maps images (B, 3, H, W) in [-1, 1] to what the U-Net sees, z (B, C, h, w), and
back. `identity` names the mapping exactly (it keys the on-disk latent cache).

- pixel, factor k: z = pixel_unshuffle(x, k), (B, 3k^2, H/k, W/k) (Shi et al. 2016); k = 1 is
  the identity. Lossless, so decode(encode(x)) == x.
- autoencoder: z = scaling_factor * mean of q(z | x) (Rombach et al. 2022, Sec. 3 and App. G: the
  latent is rescaled to unit variance before diffusion); decode(z) = D(z / scaling_factor).

Used by training (through pictor.training.latent_space, which maps a LatentSpaceConfig onto
`build_codec`) and by the sampling pipeline.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

CODEC_KINDS = ("pixel", "autoencoder")


@dataclass
class LatentCodec:
    kind: str
    channels: int            # C of z
    downsampling_factor: int  # H / h
    identity: str
    autoencoder: torch.nn.Module | None = None
    pixel_unshuffle_factor: int = 1

    @torch.no_grad()
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] -> z (B, C, h, w)."""
        if self.autoencoder is None:
            k = self.pixel_unshuffle_factor
            return F.pixel_unshuffle(images, k) if k > 1 else images
        device = next(self.autoencoder.parameters()).device
        mean, _ = self.autoencoder.encode(images.to(device))
        return mean * self.autoencoder.scaling_factor

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """z (B, C, h, w) -> images (B, 3, H, W), clamped to [-1, 1]."""
        if self.autoencoder is None:
            k = self.pixel_unshuffle_factor
            x = F.pixel_shuffle(z, k) if k > 1 else z
        else:
            device = next(self.autoencoder.parameters()).device
            x = self.autoencoder.decode(z.to(device) / self.autoencoder.scaling_factor)
        return x.clamp(-1.0, 1.0)


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def build_codec(kind: str, pixel_unshuffle_factor: int = 1,
                autoencoder_path: str | Path | None = None,
                device: torch.device | str = "cpu") -> LatentCodec:
    """The codec of `kind` "pixel" (with pixel_unshuffle_factor k) or "autoencoder" (the
    safetensors file written by `pictor train-autoencoder`; its config is in the metadata)."""
    if kind == "pixel":
        k = int(pixel_unshuffle_factor)
        if k < 1:
            raise ValueError(f"pixel_unshuffle_factor must be >= 1, got {k}")
        return LatentCodec(kind="pixel", channels=3 * k * k, downsampling_factor=k,
                           identity=f"pixel-unshuffle-{k}", pixel_unshuffle_factor=k)
    if kind != "autoencoder":
        raise ValueError(f"unknown latent space kind {kind!r}; choose one of {CODEC_KINDS}")
    from pictor.networks.autoencoder import AutoencoderConfig, AutoencoderKL
    from pictor.networks.io import load_module

    path = Path(autoencoder_path or "")
    if not path.is_file():
        raise ValueError(f"latent_space.autoencoder_path={str(path)!r} does not exist; train one "
                         f"with `pictor train-autoencoder` (it writes <run>/final/autoencoder."
                         f"safetensors)")
    ae = load_module(AutoencoderKL, AutoencoderConfig, path).to(device).eval()
    ae.requires_grad_(False)
    cfg = ae.config
    return LatentCodec(kind="autoencoder", channels=cfg.latent_channels,
                       downsampling_factor=cfg.downsampling_factor,
                       identity=f"autoencoder-sha256-{file_sha256(path)}", autoencoder=ae)
