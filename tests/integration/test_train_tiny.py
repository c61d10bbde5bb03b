"""The tiny config learns: the loss on a fixed batch falls; the run folder holds its artefacts."""

from __future__ import annotations

import json
import time

import pytest
import torch
import yaml
from PIL import Image
from train_support import TINY_YAML, shared_data, tiny_config, tiny_overrides

from pictor.config import TrainConfig, config_from_yaml_text
from pictor.training.distributed import DistInfo
from pictor.training.trainer import DiffusionTask, train


def fixed_batch_loss(task: DiffusionTask, model: torch.nn.Module, repeats: int = 8) -> float:
    """Mean loss over all examples x `repeats` fixed (t, noise) draws, captions kept."""
    gen = torch.Generator().manual_seed(1234)
    idx = torch.arange(task.num_examples)
    total = 0.0
    model.eval()
    with torch.no_grad():
        for _ in range(repeats):
            draws = task.draw(len(idx), gen)
            draws["drop"][:] = False
            total += float(task.loss(model, idx, draws))
    return total / repeats


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def test_loss_falls_over_50_steps(data, tmp_path):
    config = tiny_config(*data, tmp_path / "run")
    task = DiffusionTask(config, DistInfo())  # same seed: the model train() starts from
    before = fixed_batch_loss(task, task.model)
    t0 = time.perf_counter()
    result = train(config)
    wall = time.perf_counter() - t0
    after = fixed_batch_loss(task, result.model)
    assert result.step == 50 and len(result.losses) == 50
    assert after < 0.7 * before, (before, after)
    # the running training loss falls too (first vs last 10 steps)
    assert sum(result.losses[-10:]) < sum(result.losses[:10])

    run = tmp_path / "run"
    saved = config_from_yaml_text((run / "config.yaml").read_text(), TrainConfig)
    assert saved == config  # the resolved config, exactly
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == list(range(5, 51, 5))
    assert {"loss", "lr", "grad_norm", "images_per_second", "loop_seconds"} <= records[0].keys()
    clock = [r["loop_seconds"] for r in records]  # the loop's own clock, inside the call's
    assert 0 < clock[0] and clock == sorted(clock) and clock[-1] < wall, (clock, wall)
    with Image.open(run / "loss_curve.png") as im:
        assert im.size == (640, 400)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "step_000000025", "step_000000050"]
    ckpt_config = yaml.safe_load((run / "checkpoints" / "step_000000050" / "config.yaml")
                                 .read_text())
    assert ckpt_config["training"]["max_steps"] == 50
    assert (run / "final" / "unet.safetensors").is_file()
    assert (run / "final" / "config.yaml").is_file()


def test_cli_train_with_validation_grid(data, tmp_path, capsys):
    from pictor.cli.main import main

    out = tmp_path / "cli"
    argv = ["train", "--config", str(TINY_YAML), *tiny_overrides(*data, out),
            "--training.max_steps=4", "--training.validation_every_steps=4",
            "--training.validation_num_steps=3", "--training.checkpoint_every_steps=0"]
    assert main(argv) == 0
    with Image.open(out / "samples" / "step_000000004.png") as im:
        assert im.size == (2 * 128, 128 + 16)  # two one-line captions under their images
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_000000004"]
    # a fresh run into a folder that holds checkpoints is refused (it must be resumed)
    assert main(argv) == 2
    assert "--resume latest" in capsys.readouterr().err
    # an unknown key is refused with the valid keys listed
    assert main(["train", "--config", str(TINY_YAML), "--training.max_stepz=3"]) == 2


def test_unknown_override_message(capsys):
    from pictor.cli.main import main

    assert main(["train", "--config", str(TINY_YAML), "--optimizer.learning_rate=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'optimizer.learning_rate'" in err and "lr" in err
