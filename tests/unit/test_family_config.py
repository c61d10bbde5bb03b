"""Which family a config names: absent or `diffusion` -> TrainConfig (every existing config and
model folder unchanged), `gan` / `vae` -> their configs; an unknown family and a model whose
image size differs from the data's are clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from pictor.config import (
    GanTrainConfig,
    TrainConfig,
    VaeTrainConfig,
    dump_yaml,
    family_config_from_yaml_text,
    family_of,
    load_config,
    load_family_config,
)

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


@pytest.mark.parametrize("name,cls", [("shapes.yaml", TrainConfig), ("tiny.yaml", TrainConfig),
                                      ("tiny-gan.yaml", GanTrainConfig),
                                      ("tiny-vae.yaml", VaeTrainConfig),
                                      ("gan.yaml", GanTrainConfig), ("vae.yaml", VaeTrainConfig)])
def test_shipped_configs_name_their_family(name, cls):
    config = load_family_config(CONFIGS / name)
    assert type(config) is cls
    assert family_config_from_yaml_text(dump_yaml(config)) == config  # saved and read back


def test_diffusion_is_the_default_and_may_be_named(tmp_path):
    plain = load_config(CONFIGS / "tiny.yaml", TrainConfig)
    named = tmp_path / "named.yaml"
    named.write_text((CONFIGS / "tiny.yaml").read_text().replace(
        "model:\n", "model:\n  family: diffusion\n", 1))
    assert load_family_config(named) == plain
    assert family_of(plain) == "diffusion"
    assert "family" not in dump_yaml(plain)  # diffusion configs are written as before


def test_unknown_family_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  family: flow\n")
    with pytest.raises(ValueError, match="model.family 'flow' is not one of diffusion, gan, vae"):
        load_family_config(bad)


def test_overrides_are_checked_against_the_family(tmp_path):
    config = load_family_config(CONFIGS / "tiny-gan.yaml", ["--gan.penalty=r1"])
    assert config.gan.penalty == "r1"
    with pytest.raises(ValueError, match="unknown config key 'diffusion'"):
        load_family_config(CONFIGS / "tiny-gan.yaml", ["--diffusion.prediction_type=eps"])
    with pytest.raises(ValueError, match="unknown config key 'gan'"):
        load_family_config(CONFIGS / "tiny-vae.yaml", ["--gan.penalty=r1"])


def test_image_size_must_match_the_network():
    with pytest.raises(ValueError, match="data.image_size=64 but the model makes 16x16"):
        load_family_config(CONFIGS / "tiny-gan.yaml", ["--data.image_size=64"])
    with pytest.raises(ValueError, match="unknown DiffAugment policy"):
        load_family_config(CONFIGS / "tiny-gan.yaml", ["--gan.diffaugment=color,flip"])
