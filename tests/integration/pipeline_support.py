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


def second_tiny_model_dir(tmp_path_factory, name: str = "pictor_tiny_second") -> Path:
    """A second model, distinct from tiny_model_dir's: its folder (named `name`, which is also
    its model name) holds the same config and the tiny U-Net's weights, each floating tensor
    moved by 0.2 of its own standard deviation of fixed noise, so both models make visibly
    different images from one request and a test can tell which one answered."""
    import shutil

    import torch
    from safetensors import safe_open
    from safetensors.torch import save_file

    first = tiny_model_dir(tmp_path_factory)
    out = tmp_path_factory.getbasetemp() / name
    if (out / "unet.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shutil.copy(first / "config.yaml", out / "config.yaml")
    gen = torch.Generator().manual_seed(1)
    with safe_open(str(first / "unet.safetensors"), framework="pt") as f:
        metadata = f.metadata()
        tensors = {}
        for key in f.keys():  # noqa: SIM118 - safe_open is not a mapping
            t = f.get_tensor(key)
            if t.is_floating_point() and t.numel() > 1:
                noise = torch.randn(t.shape, generator=gen, dtype=torch.float32)
                t = (t.float() + 0.2 * t.float().std() * noise).to(t.dtype)
            tensors[key] = t.contiguous()
    save_file(tensors, str(out / "unet.safetensors"), metadata=metadata)
    return out
