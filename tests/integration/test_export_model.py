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
