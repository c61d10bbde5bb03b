"""train-autoencoder: the reconstruction loss falls, scaling_factor = 1 / latent std is stored,
and diffusion then trains in that latent space with latents cached on disk."""

from __future__ import annotations

import pytest
import torch
from train_support import MICRO_MODEL, REPO, shared_data, tiny_config

from pictor.config import AutoencoderTrainConfig, TrainConfig, config_from_yaml_text, load_config
from pictor.data.loader import ImageFolderDataset
from pictor.networks.autoencoder import AutoencoderConfig, AutoencoderKL
from pictor.networks.io import load_module
from pictor.training.autoencoder import train_autoencoder
from pictor.training.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def test_autoencoder_then_latent_diffusion(data, tmp_path):
    images, cache = data
    config = load_config(REPO / "configs" / "autoencoder.yaml", AutoencoderTrainConfig, [
        f"--data.path={images}", "--data.image_size=16", f"--training.output_dir={tmp_path}/ae",
        "--model.channels=[8,16]", "--model.max_norm_groups=4", "--training.batch_size=8",
        "--training.max_steps=40", "--training.checkpoint_every_steps=0",
        "--training.validation_every_steps=40", "--training.progress_bar=false",
        "--training.num_threads=1", "--optimizer.warmup_steps=5", "--optimizer.lr=3e-3",
    ])
    result = train_autoencoder(config)
    assert sum(result.losses[-10:]) < 0.7 * sum(result.losses[:10]), result.losses

    ae_path = tmp_path / "ae" / "final" / "autoencoder.safetensors"
    ae = load_module(AutoencoderKL, AutoencoderConfig, ae_path)
    x = ImageFolderDataset(images, image_size=16).load_all()
    with torch.no_grad():
        std = float(ae.encode(x)[0].std())
    assert ae.scaling_factor == pytest.approx(1.0 / std, rel=1e-4)
    saved = config_from_yaml_text((tmp_path / "ae" / "config.yaml").read_text(),
                                  AutoencoderTrainConfig)
    assert saved.model.scaling_factor == ae.scaling_factor
    assert (tmp_path / "ae" / "samples" / "step_000000040.png").is_file()

    # diffusion on the 8x8x4 latents of that autoencoder; the latents are cached on disk
    space = ["--latent_space.kind=autoencoder", f"--latent_space.autoencoder_path={ae_path}"]
    latent = [*MICRO_MODEL, *space, "--model.in_channels=4", "--model.out_channels=4",
              "--training.max_steps=3", "--training.validation_every_steps=3",
              "--training.validation_num_steps=2"]
    before = set(cache.glob("latents-*.safetensors"))
    run = train(tiny_config(images, cache, tmp_path / "ldm", *latent))
    assert len(set(cache.glob("latents-*.safetensors")) - before) == 1
    assert run.step == 3 and all(torch.isfinite(torch.tensor(run.losses)))
    assert (tmp_path / "ldm" / "samples" / "step_000000003.png").is_file()

    # a U-Net whose channels do not match the latent space is refused with the fix in the message
    with pytest.raises(ValueError, match="set --model.in_channels=4 --model.out_channels=4"):
        train(tiny_config(images, cache, tmp_path / "bad", *MICRO_MODEL, *space))
    assert isinstance(load_config(REPO / "configs" / "shapes.yaml", TrainConfig), TrainConfig)


def test_autoencoder_trains_on_prepared_shards(tmp_path):
    """A shard folder (what `pictor data prepare` writes) trains the autoencoder as an
    imagefolder does: a user's own data can have its own latent space."""
    from pictor.data.synth import synthesize

    shards = tmp_path / "shards"
    synthesize(shards, 32, seed=1, workers=1, progress=False, format="shards")
    config = load_config(REPO / "configs" / "autoencoder.yaml", AutoencoderTrainConfig, [
        f"--data.path={shards}", "--data.image_size=16", f"--training.output_dir={tmp_path}/ae",
        "--model.channels=[8,16]", "--model.max_norm_groups=4", "--training.batch_size=8",
        "--training.max_steps=4", "--training.checkpoint_every_steps=0",
        "--training.validation_every_steps=0", "--training.progress_bar=false",
        "--training.num_threads=1", "--optimizer.warmup_steps=1",
    ])
    result = train_autoencoder(config)
    assert result.step == 4 and all(torch.isfinite(torch.tensor(result.losses)))
    assert (tmp_path / "ae" / "final" / "autoencoder.safetensors").is_file()
