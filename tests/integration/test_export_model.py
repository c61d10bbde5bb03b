"""`pictor export-model`: a run becomes a shippable model folder, optionally in float16."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pipeline_support import tiny_model_dir  # noqa: E402

from pictor.cli.main import main  # noqa: E402
from pictor.pipeline import load_pipeline  # noqa: E402


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    return tiny_model_dir(tmp_path_factory).parent


def test_export_float16_halves_weights_and_still_generates(run_dir, tmp_path):
    out = tmp_path / "model16"
    assert main(["export-model", str(run_dir), str(out), "--dtype", "float16"]) == 0
    for name in ("unet.safetensors", "config.yaml", "metrics.jsonl"):
        assert (out / name).is_file(), name
    full = load_file(str(run_dir / "final" / "unet.safetensors"))
    half = load_file(str(out / "unet.safetensors"))
    assert set(full) == set(half)
    for key, value in full.items():
        if value.is_floating_point():
            assert half[key].dtype == torch.float16
            assert torch.equal(half[key].float(), value.half().float())
    images = load_pipeline(out).generate("a red circle", num_images=1, seed=3, num_steps=4)
    assert np.asarray(images[0].image).shape[2] == 3


def test_export_of_an_unfinished_run_is_a_clear_error(tmp_path, capsys):
    assert main(["export-model", str(tmp_path), str(tmp_path / "out")]) == 2
    assert "final/unet.safetensors" in capsys.readouterr().err


def test_export_of_a_checkpoint_takes_its_ema_weights(tmp_path_factory, tmp_path, capsys):
    from train_support import MICRO_MODEL, shared_data, tiny_config

    from pictor.training.checkpoints import load_checkpoint
    from pictor.training.trainer import train

    data, cache = shared_data(tmp_path_factory)
    run = tmp_path / "run"
    train(tiny_config(data, cache, run, *MICRO_MODEL, "--training.max_steps=10",
                      "--training.checkpoint_every_steps=5", "--training.keep_last_checkpoints=2",
                      "--training.validation_every_steps=0", "--training.num_threads=1"))
    ema5 = load_checkpoint(run / "checkpoints" / "step_000000005").ema
    assert main(["export-model", str(run), str(tmp_path / "m5"), "--checkpoint", "5"]) == 0
    exported = load_file(str(tmp_path / "m5" / "unet.safetensors"))
    assert set(exported) == set(ema5)
    assert all(torch.equal(exported[k], ema5[k]) for k in ema5)
    # the last checkpoint is the finished run's EMA: same weights as final/
    assert main(["export-model", str(run), str(tmp_path / "mL"), "--checkpoint", "latest"]) == 0
    final = load_file(str(run / "final" / "unet.safetensors"))
    latest = load_file(str(tmp_path / "mL" / "unet.safetensors"))
    assert all(torch.equal(latest[k], final[k]) for k in final)
    a = load_pipeline(tmp_path / "mL").generate("a red circle", num_images=1, seed=3, num_steps=4)
    b = load_pipeline(run / "final").generate("a red circle", num_images=1, seed=3, num_steps=4)
    assert np.array_equal(np.asarray(a[0].image), np.asarray(b[0].image))
    capsys.readouterr()
    assert main(["export-model", str(run), str(tmp_path / "x"), "--checkpoint", "7"]) == 2
    err = capsys.readouterr().err
    assert "step_000000007" in err and "step_000000010" in err
