"""`pictor export-model`: turn a finished training run into a model folder to ship or serve.

A model folder is what `pictor.pipeline.load_pipeline` reads: `unet.safetensors` (EMA weights,
config in the metadata), `config.yaml` (the resolved training config), for latent models
`autoencoder.safetensors`, for models with a trained text encoder `text_encoder.safetensors`.
Beside them go the run's evidence: `metrics.jsonl` (the training log), `loss_curve.png` and the
last validation grid, so a shipped model carries how it was made.
Weights may be stored in float16 to halve the folder (loaded back into float32).

`checkpoint=` exports an intermediate checkpoint of a run (finished or still training) instead
of final/: its EMA weights (the raw weights when the run keeps no EMA), with the validation grid
of that step, e.g. to score step 5,000 while the run goes on.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

STORAGE_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _checkpoint_path(run_dir: Path, checkpoint: str) -> Path:
    from pictor.training.checkpoints import find_latest

    root = run_dir / "checkpoints"
    if checkpoint == "latest":
        path = find_latest(root)
        if path is None:
            raise ValueError(f"no complete checkpoint under {root}")
        return path
    path = root / f"step_{int(checkpoint):09d}" if checkpoint.isdigit() else Path(checkpoint)
    if not path.is_dir():
        have = sorted(p.name for p in root.glob("step_*")) if root.is_dir() else []
        raise ValueError(f"checkpoint {str(path)!r} not found; {root} holds "
                         f"{', '.join(have) or 'none'}")
    return path


def _unet_from_checkpoint(path: Path):
    """(UNet with the checkpoint's EMA or raw weights, TrainConfig, step)."""
    from pictor.config import TrainConfig, load_config
    from pictor.networks.unet import UNet
    from pictor.text.encoders import TRAINABLE_SPEC
    from pictor.training.checkpoints import load_checkpoint

    ckpt = load_checkpoint(path)
    config = load_config(path / "config.yaml", TrainConfig, [])
    if config.text.spec == TRAINABLE_SPEC:
        raise ValueError("exporting a checkpoint of a run with a trainable text encoder is not "
                         "supported (its vocabulary lives in final/); export the finished run")
    unet = UNet(config.model)
    unet.load_state_dict(ckpt.ema if ckpt.ema is not None else ckpt.model)
    return unet, config, ckpt.step


def export_model(run_dir: str | Path, out_dir: str | Path, *, dtype: str = "float32",
                 checkpoint: str | None = None) -> Path:
    """Copy run_dir/final (+ training evidence) to out_dir, weights in `dtype`. Returns out_dir.

    checkpoint: None (final/), "latest", a step number ("5000") or a checkpoint folder."""
    from pictor.config import TrainConfig, load_config
    from pictor.networks.io import load_module, save_module
    from pictor.networks.unet import UNet, UNetConfig
    from pictor.text.encoders import (
        TEXT_ENCODER_FILE,
        TrainableTextEncoder,
        TrainableTextEncoderConfig,
    )

    run_dir, out_dir = Path(run_dir), Path(out_dir)
    if dtype not in STORAGE_DTYPES:
        raise ValueError(f"dtype {dtype!r}: choose one of {', '.join(STORAGE_DTYPES)}")
    if (run_dir / "config.yaml").is_file():  # a GAN or VAE run: its final/ is the model folder
        from pictor.config import family_config_from_yaml_text, family_of, read_text_limited

        family = family_of(family_config_from_yaml_text(
            read_text_limited(run_dir / "config.yaml"), str(run_dir / "config.yaml")))
        if family != "diffusion":
            raise ValueError(f"{run_dir} is a {family} run; export-model copies diffusion runs. "
                             f"Its {run_dir / 'final'} is already a model folder (--model "
                             f"{run_dir / 'final'})")
    encoder = None
    if checkpoint is not None:
        source = _checkpoint_path(run_dir, str(checkpoint))
        unet, config, step = _unet_from_checkpoint(source)
        grid: Path | None = run_dir / "samples" / f"step_{step:09d}.png"
    else:
        source = run_dir / "final"
        if not (source / "unet.safetensors").is_file():
            raise ValueError(f"{source / 'unet.safetensors'} not found: is {run_dir} a finished "
                             "`pictor train` run folder? (--checkpoint exports a checkpoint of "
                             "an unfinished run)")
        unet = load_module(UNet, UNetConfig, source / "unet.safetensors")
        config = load_config(source / "config.yaml", TrainConfig, [])
        if (source / TEXT_ENCODER_FILE).is_file():  # trained with the U-Net (text: trainable)
            encoder = load_module(TrainableTextEncoder, TrainableTextEncoderConfig,
                                  source / TEXT_ENCODER_FILE)
        samples = run_dir / "samples"
        grids = sorted(samples.glob("*.png")) if samples.is_dir() else []
        grid = grids[-1] if grids else None
    out_dir.mkdir(parents=True, exist_ok=True)
    save_module(unet, unet.config, out_dir / "unet.safetensors", dtype=STORAGE_DTYPES[dtype])
    shutil.copy2(source / "config.yaml", out_dir / "config.yaml")
    if config.latent_space.kind == "autoencoder":
        shutil.copy2(config.latent_space.autoencoder_path, out_dir / "autoencoder.safetensors")
    if encoder is not None:
        save_module(encoder, encoder.config, out_dir / TEXT_ENCODER_FILE,
                    dtype=STORAGE_DTYPES[dtype])
    for name in ("metrics.jsonl", "loss_curve.png"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out_dir / name)
    if grid is not None and grid.is_file():
        shutil.copy2(grid, out_dir / f"validation_{grid.name}")
    return out_dir
