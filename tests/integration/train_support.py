"""Shared pieces of the training integration tests (not a test module).

The tiny shapes data set and the text-embedding cache are made once per pytest session (under
the session's base temp folder), so only the first test pays for rendering images and loading
the MiniLM text encoder.
"""

from __future__ import annotations

from pathlib import Path

import torch

from pictor.config import TrainConfig, load_config

REPO = Path(__file__).resolve().parents[2]
TINY_YAML = REPO / "configs" / "tiny.yaml"

# The smallest U-Net that still has every part (two levels, cross-attention): the resume, DDP and
# kill tests only need exact bookkeeping, not a good model.
MICRO_MODEL = ["--model.channels=[8,16]", "--model.head_dim=8", "--model.time_embed_dim=16",
               "--training.batch_size=4"]


def shared_data(tmp_path_factory) -> tuple[Path, Path]:
    """(imagefolder with 64 shapes images, text/latent cache folder), made once per session."""
    from pictor.data.synth import synthesize

    base = tmp_path_factory.getbasetemp() / "pictor_train_shared"
    data, cache = base / "shapes64", base / "cache"
    if not (data / "metadata.jsonl").is_file():
        synthesize(data, 64, seed=0, workers=1, progress=False)
    cache.mkdir(parents=True, exist_ok=True)
    return data, cache


def tiny_overrides(data: Path, cache: Path, out: Path, *extra: str) -> list[str]:
    return [f"--data.path={data}", f"--data.cache_dir={cache}",
            f"--training.output_dir={out}", *extra]


def tiny_config(data: Path, cache: Path, out: Path, *extra: str) -> TrainConfig:
    return load_config(TINY_YAML, TrainConfig, tiny_overrides(data, cache, out, *extra))


def assert_same_state(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"tensors differ: {different[:5]}"
