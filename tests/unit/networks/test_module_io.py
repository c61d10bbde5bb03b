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
    with pytest.raises(ValueError, match="nowhere.safetensors is not a usable UNet file "
                       r"\(FileNotFoundError: no model file"):
        load_module(UNet, UNetConfig, tmp_path / "nowhere.safetensors")


def test_damaged_and_hostile_files_are_value_errors_naming_the_file(tmp_path):
    import json

    good = tmp_path / "good.safetensors"
    save_module(UNet(TINY_UNET), TINY_UNET, good)
    data = good.read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (tmp_path / "header.safetensors").write_bytes(b"\xff" * 8 + data[8:])
    (tmp_path / "empty.safetensors").write_bytes(b"")
    # the right config, tensors of another shape
    wide = UNetConfig(**{**TINY_UNET.__dict__, "channels": (16, 48)})
    save_file({k: v.contiguous() for k, v in UNet(wide).state_dict().items()},
              str(tmp_path / "shapes.safetensors"),
              metadata={"config": json.dumps({**TINY_UNET.__dict__}),
                        "config_class": "UNetConfig"})
    # a config asking for a network of ~10^12 parameters over a file of a few KB: refused from
    # the header, before a single weight is allocated
    huge = {**TINY_UNET.__dict__, "channels": [2**20, 2**20]}
    save_file({"w": torch.zeros(2)}, str(tmp_path / "huge.safetensors"),
              metadata={"config": json.dumps(huge), "config_class": "UNetConfig"})
    save_file({"w": torch.zeros(2)}, str(tmp_path / "list.safetensors"),
              metadata={"config": "[1, 2]", "config_class": "UNetConfig"})
    save_file({"w": torch.zeros(2)}, str(tmp_path / "json.safetensors"),
              metadata={"config": "{oops", "config_class": "UNetConfig"})
    for name, problem in [("truncated", "SafetensorError"), ("header", "SafetensorError"),
                          ("empty", "SafetensorError"), ("shapes", "wrong shapes"),
                          ("huge", "missing"), ("list", "not a JSON object"),
                          ("json", "Expecting property name")]:
        path = tmp_path / f"{name}.safetensors"
        with pytest.raises(ValueError, match=problem) as info:
            load_module(UNet, UNetConfig, path)
        assert str(path) in str(info.value), name


def test_save_requires_a_dataclass_config(tmp_path):
    with pytest.raises(ValueError, match="dataclass"):
        save_module(UNet(TINY_UNET), {"channels": [16, 32]}, tmp_path / "x.safetensors")
