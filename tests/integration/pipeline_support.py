"""A tiny trained model folder for the pipeline and `pictor generate` tests (not a test module).

Trained once per pytest session with configs/tiny.yaml (16x16 pixels, a micro U-Net, a few
steps: the tests check bookkeeping and exact reproducibility, not image quality) and shared by
tests/unit/test_pipeline.py and tests/integration/test_cli_generate.py through the session's
base temp folder.
"""

from __future__ import annotations

from pathlib import Path

from train_support import MICRO_MODEL, shared_data, tiny_config

TINY_STEPS = ["--training.max_steps=10", "--training.checkpoint_every_steps=0",
              "--training.validation_every_steps=0", "--training.num_threads=1"]


def tiny_model_dir(tmp_path_factory) -> Path:
    """The final/ folder of a 10-step tiny run (unet.safetensors + config.yaml)."""
    from pictor.training.trainer import train

    out = tmp_path_factory.getbasetemp() / "pictor_pipeline_tiny_run"
    final = out / "final"
    if not (final / "unet.safetensors").is_file():
        data, cache = shared_data(tmp_path_factory)
        train(tiny_config(data, cache, out, *MICRO_MODEL, *TINY_STEPS))
    return final
