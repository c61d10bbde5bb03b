"""`pictor export-model`: turn a finished training run into a model folder to ship or serve.

A model folder is what `pictor.pipeline.load_pipeline` reads: `unet.safetensors` (EMA weights,
config in the metadata), `config.yaml` (the resolved training config), for latent models
`autoencoder.safetensors`, for models with a trained text encoder `text_encoder.safetensors`.
Beside them go the run's evidence: `metrics.jsonl` (the training log), `loss_curve.png` and the
last validation grid, so a shipped model carries how it was made.
Weights may be stored in float16 to halve the folder (loaded back into float32).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def export_model(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32") -> Path:
    """Copy run_dir/final (+ training evidence) to out_dir, weights in `dtype`. Returns out_dir."""
    from pictor.config import TrainConfig, load_config
    from pictor.networks.io import load_module, save_module
    from pictor.networks.unet import UNet, UNetConfig
    from pictor.text.encoders import (
        TEXT_ENCODER_FILE,
        TrainableTextEncoder,
        TrainableTextEncoderConfig,
    )

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    final = run_dir / "final"
    if not (final / "unet.safetensors").is_file():
        raise ValueError(f"{final / 'unet.safetensors'} not found: is {run_dir} a finished "
                         "`pictor train` run folder?")
    if dtype not in _DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(_DTYPES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    unet = load_module(UNet, UNetConfig, final / "unet.safetensors")
    save_module(unet, unet.config, out_dir / "unet.safetensors", dtype=_DTYPES[dtype])
    shutil.copy2(final / "config.yaml", out_dir / "config.yaml")
    config = load_config(final / "config.yaml", TrainConfig, [])
    if config.latent_space.kind == "autoencoder":
        shutil.copy2(config.latent_space.autoencoder_path, out_dir / "autoencoder.safetensors")
    if (final / TEXT_ENCODER_FILE).is_file():  # trained with the U-Net (text.spec: trainable)
        encoder = load_module(TrainableTextEncoder, TrainableTextEncoderConfig,
                              final / TEXT_ENCODER_FILE)
        save_module(encoder, encoder.config, out_dir / TEXT_ENCODER_FILE, dtype=_DTYPES[dtype])
    for name in ("metrics.jsonl", "loss_curve.png"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    grids = sorted((run_dir / "samples").glob("*.png")) if (run_dir / "samples").is_dir() else []
    if grids:
        shutil.copy2(grids[-1], out_dir / f"validation_{grids[-1].name}")
    return out_dir
