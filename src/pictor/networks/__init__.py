"""Neural networks: the conditional U-Net denoiser, the KL autoencoder, their building blocks,
and safetensors I/O with the config stored in the file."""

from pictor.networks.autoencoder import AutoencoderConfig, AutoencoderKL
from pictor.networks.io import load_module, save_module
from pictor.networks.unet import UNet, UNetConfig, unet_presets

__all__ = [
    "AutoencoderConfig",
    "AutoencoderKL",
    "UNet",
    "UNetConfig",
    "load_module",
    "save_module",
    "unet_presets",
]
