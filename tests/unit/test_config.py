"""Configs: YAML round trip, typed overrides, clear errors for unknown keys and bad values."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pictor.config import (
    AutoencoderTrainConfig,
    FinetuneConfig,
    TrainConfig,
    config_from_yaml_text,
    dump_yaml,
    load_config,
    save_config,
)
from pictor.diffusion.schedules import ScheduleConfig
from pictor.networks.unet import UNetConfig

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def test_defaults_round_trip_through_yaml(tmp_path):
    config = TrainConfig()
    save_config(config, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == config
    assert config_from_yaml_text(dump_yaml(config), TrainConfig) == config
    assert isinstance(config.model, UNetConfig)
    assert isinstance(config.diffusion.schedule, ScheduleConfig)


@pytest.mark.parametrize("name,cls", [("tiny.yaml", TrainConfig), ("shapes.yaml", TrainConfig),
                                      ("shapes-para.yaml", TrainConfig),
                                      ("reward.yaml", FinetuneConfig),
                                      ("autoencoder.yaml", AutoencoderTrainConfig)])
def test_shipped_configs_load_and_round_trip(name, cls, tmp_path):
    config = load_config(CONFIGS / name, cls)
    save_config(config, tmp_path / name)
    assert load_config(tmp_path / name, cls) == config


# every YAML file in configs/ and the config class its command reads it as (None: `pictor train`
# of any family, read by model.family)
EVERY_CONFIG = {"tiny.yaml": TrainConfig, "shapes.yaml": TrainConfig,
                "shapes-para.yaml": TrainConfig, "shapes-pixel.yaml": TrainConfig,
                "emoji.yaml": TrainConfig, "reward.yaml": FinetuneConfig,
                "autoencoder.yaml": AutoencoderTrainConfig,
                "emoji-autoencoder.yaml": AutoencoderTrainConfig, "clip.yaml": "clip",
                "gan.yaml": None, "vae.yaml": None, "tiny-gan.yaml": None, "tiny-vae.yaml": None}


def test_every_shipped_config_loads_as_its_command_reads_it():
    """A config the README or a docs page tells users to run fails here, not an hour into a
    session (configs/emoji.yaml once held a caption with a colon that YAML read as a mapping)."""
    from pictor.config import family_of, load_family_config
    from pictor.evaluation.clip_training import ClipTrainConfig

    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(EVERY_CONFIG), \
        "a config in configs/ is not listed in EVERY_CONFIG (or a listed one is gone)"
    for name, cls in EVERY_CONFIG.items():
        if cls is None:
            assert family_of(load_family_config(CONFIGS / name)) in ("gan", "vae"), name
        else:
            load_config(CONFIGS / name, ClipTrainConfig if cls == "clip" else cls)


def test_overrides_are_typed():
    config = load_config(CONFIGS / "tiny.yaml", TrainConfig, [
        "--training.max_steps=7",
        "--optimizer.lr=1e-4",                      # YAML would read this as a string
        "--optimizer.betas=[0.8, 0.95]",
        "--diffusion.min_snr_gamma=null",
        "--diffusion.prediction_type=eps",
        "--diffusion.schedule.kind=linear",
        "--diffusion.schedule.zero_terminal_snr=true",
        "--model.channels=[8,16]",
        "--training.validation_prompts=[\"a red circle\", \"two stars\"]",
        "training.output_dir=runs/x",               # the leading -- is optional
        "--text.spec=null",                          # a str field keeps the literal text
    ])
    assert config.training.max_steps == 7
    assert config.optimizer.lr == 1e-4 and isinstance(config.optimizer.lr, float)
    assert config.optimizer.betas == (0.8, 0.95)
    assert config.diffusion.min_snr_gamma is None
    assert config.diffusion.prediction_type == "eps"
    assert config.diffusion.schedule == ScheduleConfig(kind="linear", zero_terminal_snr=True)
    assert config.model.channels == (8, 16)
    assert config.training.validation_prompts == ["a red circle", "two stars"]
    assert config.training.output_dir == "runs/x"
    assert config.text.spec == "null"


@pytest.mark.parametrize("override,message", [
    ("--training.max_stepz=3", "unknown config key 'training.max_stepz'.*max_steps"),
    ("--trainin.max_steps=3", "unknown config key 'trainin'.*training"),
    ("--model.channels.x=3", "'model.channels' is a value, not a section"),
    ("--training=3", "training is a section"),
    ("--training.max_steps=many", "training.max_steps: expected an integer, got 'many'"),
    ("--optimizer.lr=fast", "optimizer.lr: expected a number"),
    ("--diffusion.prediction_type=score", "not one of 'eps', 'v', 'x0'"),
    ("--optimizer.betas=[0.9]", "expected 2 values"),
    ("--training.progress_bar=maybe", "expected true or false"),
    ("--training.batch_size=10", "batch_size=10 must be divisible by"),
    ("--training.caption_dropout_prob=1.5", "caption_dropout_prob must be in"),
    ("--training.max_steps", "must look like --section.key=value"),
])
def test_bad_overrides_raise_clear_errors(override, message):
    extra = ["--training.grad_accum_steps=4"] if "batch_size" in override else []
    with pytest.raises(ValueError, match=message):
        load_config(CONFIGS / "tiny.yaml", TrainConfig, [override, *extra])


def test_unknown_key_in_yaml_file_names_valid_keys(tmp_path):
    (tmp_path / "c.yaml").write_text("optimizer:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError, match=r"unknown config key 'optimizer.learning_rate'; valid "
                                         r"keys of 'optimizer': betas, eps, lr"):
        load_config(tmp_path / "c.yaml")
    with pytest.raises(ValueError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")


def test_consistency_checks():
    with pytest.raises(ValueError, match="autoencoder_path"):
        load_config(None, TrainConfig, ["--latent_space.kind=autoencoder"])
    with pytest.raises(ValueError, match="not divisible by latent_space.pixel_unshuffle_factor"):
        load_config(None, TrainConfig, ["--data.image_size=30",
                                        "--latent_space.pixel_unshuffle_factor=4"])


def test_yaml_is_loaded_with_limits(tmp_path):
    """An alias bomb, a recursive alias, deep nesting and a huge file are ValueErrors naming the
    file, at once; ordinary YAML (aliases included) loads as yaml.safe_load would."""
    import time

    import yaml

    from pictor.config import MAX_YAML_BYTES, load_yaml, read_yaml_file

    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    start = time.monotonic()
    with pytest.raises(ValueError, match="bomb.yaml: .*alias bomb"):
        load_yaml(bomb, "bomb.yaml")
    assert time.monotonic() - start < 5  # 10^10 values once expanded
    with pytest.raises(ValueError, match="refers to itself"):
        load_yaml("a: &a [1, *a]\n", "loop.yaml")
    with pytest.raises(ValueError, match="RecursionError|YAMLError"):
        load_yaml("a: " + "[" * 50_000 + "]" * 50_000 + "\n", "deep.yaml")
    with pytest.raises(ValueError, match="not a usable YAML config"):
        load_yaml("a: [1, 2\nb: }", "broken.yaml")
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_YAML_BYTES + "\n")
    with pytest.raises(ValueError, match="big.yaml: more than"):
        read_yaml_file(big)
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):
        read_yaml_file(fifo)
    text = "base: &b {lr: 0.001, betas: [0.9, 0.99]}\nother: *b\nlist: [1, two, 3.5, null]\n"
    assert load_yaml(text, "ok.yaml") == yaml.safe_load(text)
    assert load_yaml("", "empty.yaml") is None
