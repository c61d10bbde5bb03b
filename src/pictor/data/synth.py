"""Write a shapes-world training data set: a folder of PNGs plus `metadata.jsonl`.

Layout (Hugging Face `imagefolder` convention): `OUT/000000.png ...` and `OUT/metadata.jsonl`
with one line per image, `{"file_name", "text", "category", "seed"}`, in index order, plus
`OUT/synth_config.json` recording how the folder was made.

Seed namespaces (the rule that keeps training and evaluation apart)
--------------------------------------------------------------------
Every random example of the shapes world is drawn from `example_rng(namespace, example_seed)`,
a numpy Generator seeded by `SeedSequence(example_seed, spawn_key=(NAMESPACE_ID,))`. The
namespace id enters the seed material as a spawn key, so two namespaces never share a stream,
whatever the example seeds (numpy's documented way to make independent child streams).

- `train` (id 1): the only namespace `synthesize` (and so `pictor data synth`) ever uses. The
  image at `index` of a run with seed `seed` has example seed `seed * 2**32 + index`; the run
  seed must be in [0, 2**31) and a run holds at most 2**32 images, so example seeds never
  collide across runs. The `seed` field of `metadata.jsonl` is that example seed:
  `sample_prompt_and_scene(category, example_rng("train", seed))` re-creates the image.
- `validation` (id 2): the `validation-shapes` suite (checkpoint selection).
- `eval` (id 3): the `geneval-shapes` benchmark suite.
- `test` (id 4): fresh ground-truth renders in tests (e.g. the scorer's acceptance check).

Prompts repeat across namespaces (the world has only four `single_object` prompts), as COCO
classes repeat between GenEval and training; what is disjoint is every random draw.

Categories are allocated exactly to the mix (largest remainders), then shuffled by a stream of
the run seed, so the output does not depend on how many worker processes render it.
"""

from __future__ import annotations

import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pictor.data.shapes import CATEGORIES, render_scene, sample_prompt_and_scene, validate_mix

SEED_NAMESPACES: dict[str, int] = {"train": 1, "validation": 2, "eval": 3, "test": 4}
MAX_RUN_SEED = 2**31  # exclusive
MAX_IMAGES_PER_RUN = 2**32
_MIX_STREAM = 0xC47E  # spawn key of the run's category-shuffling stream (not an example stream)
_CHUNK_SIZE = 256  # images per task sent to a worker


def example_rng(namespace: str, example_seed: int) -> np.random.Generator:
    """The random stream of one example of a namespace (see the module docstring)."""
    if namespace not in SEED_NAMESPACES:
        raise ValueError(
            f"unknown seed namespace {namespace!r}; choose one of {', '.join(SEED_NAMESPACES)}"
        )
    if example_seed < 0:
        raise ValueError(f"example seeds are >= 0, got {example_seed}")
    return np.random.default_rng(
        np.random.SeedSequence(example_seed, spawn_key=(SEED_NAMESPACES[namespace],))
    )


def train_example_seed(seed: int, index: int) -> int:
    """Example seed of image `index` of a training run with seed `seed`."""
    return seed * MAX_IMAGES_PER_RUN + index


def allocate_categories(num_images: int, mix: dict[str, float] | None, seed: int) -> list[str]:
    """Exactly `round(weight * num_images)` images per category (largest remainders), shuffled."""
    weights = validate_mix(mix)
    quotas = {c: w * num_images for c, w in weights.items()}
    counts = {c: math.floor(q) for c, q in quotas.items()}
    by_remainder = sorted(quotas, key=lambda c: (-(quotas[c] - counts[c]), CATEGORIES.index(c)))
    for category in by_remainder[: num_images - sum(counts.values())]:
        counts[category] += 1
    categories = [c for c in CATEGORIES if c in counts for _ in range(counts[c])]
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_MIX_STREAM,)))
    return [categories[i] for i in rng.permutation(num_images)]


@dataclass(frozen=True)
class SynthConfig:
    """What `synthesize` wrote; saved as `synth_config.json` beside the images."""

    num_images: int  # images in the folder
    seed: int  # run seed; image i has example seed seed * 2**32 + i in namespace "train"
    mix: dict[str, float]  # category -> share of images (normalised)
    namespace: str = "train"  # always "train": see the module docstring
    spec_version: int = 1  # shapes-world spec version the renderer follows


def _render_chunk(task: tuple[str, int, int, list[str], int]) -> list[dict]:
    """Render images [start, start + len(categories)) and return their metadata records."""
    out_dir, seed, start, categories, digits = task
    records = []
    for offset, category in enumerate(categories):
        index = start + offset
        example_seed = train_example_seed(seed, index)
        prompt, scene = sample_prompt_and_scene(category, example_rng("train", example_seed))
        file_name = f"{index:0{digits}d}.png"
        render_scene(scene, validate=False).save(Path(out_dir) / file_name, compress_level=1)
        records.append(
            {"file_name": file_name, "text": prompt, "category": category, "seed": example_seed}
        )
    return records


def default_workers() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def synthesize(
    out_dir: str | os.PathLike,
    num_images: int,
    seed: int = 0,
    mix: dict[str, float] | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> SynthConfig:
    """Render `num_images` training examples into `out_dir` (identical for any `workers`).

    `mix` maps categories to weights (None: all six equally). `workers` processes render in
    parallel (None: all CPUs this process may use; 1: no pool). A folder that already holds a
    `metadata.jsonl` is refused unless `overwrite` (which rewrites it, leaving other files).
    """
    from tqdm import tqdm

    if not 1 <= num_images <= MAX_IMAGES_PER_RUN:
        raise ValueError(f"num_images must be in [1, {MAX_IMAGES_PER_RUN}], got {num_images}")
    if not 0 <= seed < MAX_RUN_SEED:
        raise ValueError(f"seed must be in [0, {MAX_RUN_SEED}) (see pictor.data.synth), got {seed}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    out = Path(out_dir)
    metadata_path = out / "metadata.jsonl"
    if metadata_path.exists() and not overwrite:
        raise ValueError(
            f"{metadata_path} exists: choose a new folder or overwrite it (overwrite=True, CLI --overwrite)"
        )
    out.mkdir(parents=True, exist_ok=True)

    config = SynthConfig(num_images=num_images, seed=seed, mix=validate_mix(mix))
    categories = allocate_categories(num_images, mix, seed)
    digits = max(6, len(str(num_images - 1)))
    tasks = [
        (str(out), seed, start, categories[start : start + _CHUNK_SIZE], digits)
        for start in range(0, num_images, _CHUNK_SIZE)
    ]
    bar = tqdm(total=num_images, unit="img", desc="synth", disable=not progress)
    with open(metadata_path, "w", encoding="utf-8") as metadata:
        if workers == 1:
            chunks = map(_render_chunk, tasks)
            pool = None
        else:
            pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
            chunks = pool.map(_render_chunk, tasks)  # results come back in task order
        try:
            for records in chunks:
                metadata.writelines(json.dumps(record) + "\n" for record in records)
                bar.update(len(records))
        finally:
            if pool is not None:
                pool.shutdown(cancel_futures=True)
            bar.close()
    (out / "synth_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return config
