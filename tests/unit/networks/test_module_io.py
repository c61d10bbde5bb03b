"""safetensors I/O: bit-exact round trips with the config stored in the file."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from pictor.networks.autoencoder import AutoencoderConfig, AutoencoderKL
from pictor.networks.io import load_module, read_config, read_metadata, save_module
from pictor.networks.unet import UNet, UNetConfig

TINY_UNET = UNetConfig(channels=(16, 32), blocks_per_level=(1, 2), attention_levels=(1,),
                       head_dim=8, context_dim=12, zero_init_output=False)


def test_unet_round_trip_is_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = UNet(TINY_UNET)
    path = tmp_path / "sub" / "unet.safetensors"
    save_module(model, model.config, path, extra_metadata={"step": "12"})
    loaded = load_module(UNet, UNetConfig, path)
    assert loaded.config == TINY_UNET  # tuples restored, not lists
    for (name, a), (name_b, b) in zip(model.state_dict().items(), loaded.state_dict().items(),
                                      strict=True):
        assert name == name_b and torch.equal(a, b)
    x, t, ctx = torch.randn(1, 4, 8, 8), torch.tensor([3.0]), torch.randn(1, 2, 12)
    assert torch.equal(model(x, t, ctx), loaded(x, t, ctx))
    assert read_metadata(path)["step"] == "12"
    assert path.stat().st_mode & 0o777 == 0o644  # others may read a model folder


def test_autoencoder_round_trip_keeps_scaling_factor(tmp_path):
    cfg = AutoencoderConfig(channels=(8, 8), scaling_factor=0.61)
    model = AutoencoderKL(cfg)
    save_module(model, cfg, tmp_path / "ae.safetensors")
    loaded = load_module(AutoencoderKL, AutoencoderConfig, tmp_path / "ae.safetensors")
    assert loaded.scaling_factor == 0.61 and loaded.config == cfg
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_file_without_config_is_a_clear_error(tmp_path):
    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ValueError, match="no 'config' entry") as info:
        load_module(UNet, UNetConfig, path)
    assert str(path) in str(info.value)


def test_wrong_config_class_and_missing_file(tmp_path):
    path = tmp_path / "ae.safetensors"
    save_module(AutoencoderKL(AutoencoderConfig(channels=(8, 8))),
                AutoencoderConfig(channels=(8, 8)), path)
    with pytest.raises(ValueError, match="AutoencoderConfig, not a UNetConfig"):
        read_config(UNetConfig, path)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        load_module(UNet, UNetConfig, tmp_path / "nowhere.safetensors")


def test_save_requires_a_dataclass_config(tmp_path):
    with pytest.raises(ValueError, match="dataclass"):
        save_module(UNet(TINY_UNET), {"channels": [16, 32]}, tmp_path / "x.safetensors")
