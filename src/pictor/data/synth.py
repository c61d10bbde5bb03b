"""Write a shapes-world training data set: a folder of PNGs plus `metadata.jsonl`, or shards.

Layout "imagefolder" (Hugging Face convention, the default): `OUT/000000.png ...` and
`OUT/metadata.jsonl` with one line per image, `{"file_name", "text", "category", "seed",
"canonical", "captions"}`, in index order. Layout "shards": the Parquet shards +
`manifest.json` of pictor.data.shards (what `pictor data prepare` writes), one record per image
with key `000000`, the PNG bytes, the caption and `{"category", "seed", "canonical",
"captions"}` in its `extra` JSON. Both hold byte-identical PNGs, and `OUT/synth_config.json`
records how the folder was made.

Captions (`captions=`, CLI `--captions`): "canonical" (the default) writes the canonical
caption; "paraphrase" a training-split paraphrase of it (pictor.data.captions); "mix" the
canonical caption with probability `canonical_share`, else a paraphrase. `canonical` is always
the canonical caption of the scene (what the scorer and the grounding masks follow) and
`captions` says what `text` is: "canonical" or "paraphrase-v<CAPTION_LANGUAGE_VERSION>". Caption
randomness comes from the example's own caption stream (`caption_rng`), never from the scene's,
so the images of a run are byte-identical whatever the caption mode.

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
- `validation` (id 2): the `validation-shapes` and `validation-shapes-para` suites (every
  decision: checkpoints, settings, recipes).
- `eval` (id 3): the first benchmark draw, `geneval-shapes-v1` (old numbers refer to it).
- `test` (id 4): fresh ground-truth renders in tests (e.g. the scorer's acceptance check).
- `eval2` (id 5): the benchmark since v2, `geneval-shapes` and `geneval-shapes-para`, drawn in
  a namespace nobody had looked at when `eval` had been used to choose settings.

Each example also has a *caption stream*, `caption_rng(namespace, example_seed)`: the child
`SeedSequence(example_seed, spawn_key=(NAMESPACE_ID, CAPTION_STREAM))` of the example's stream.
Paraphrases are drawn from it, so a caption never shifts the draws of the scene.

Prompts repeat across namespaces (the world has only four `single_object` prompts), as COCO
classes repeat between GenEval and training; what is disjoint is every random draw.

Categories are allocated exactly to the mix (largest remainders), then shuffled by a stream of
the run seed, so the output does not depend on how many worker processes render it.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from pictor.data.captions import (
    CAPTION_LANGUAGE_VERSION,
    CAPTION_MODES,
    DEFAULT_CANONICAL_SHARE,
    Caption,
    canonical_caption,
    caption_label,
    check_canonical_share,
    training_caption,
)
from pictor.data.shapes import (
    CATEGORIES,
    parse_prompt,
    render_scene,
    sample_prompt_and_scene,
    validate_mix,
)

SEED_NAMESPACES: dict[str, int] = {"train": 1, "validation": 2, "eval": 3, "test": 4, "eval2": 5}
MAX_RUN_SEED = 2**31  # exclusive
MAX_IMAGES_PER_RUN = 2**32
CAPTION_STREAM = 0xCA97  # second spawn key of an example's caption stream (see caption_rng)
_MIX_STREAM = 0xC47E  # spawn key of the run's category-shuffling stream (not an example stream)
_CHUNK_SIZE = 256  # images per task sent to a worker
SYNTH_FORMATS = ("imagefolder", "shards")


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


def caption_rng(namespace: str, example_seed: int) -> np.random.Generator:
    """The caption stream of one example: a child of its `example_rng` stream (module
    docstring), so drawing a caption leaves the example's scene draws untouched."""
    example_rng(namespace, example_seed)  # the same checks of namespace and seed
    return np.random.default_rng(np.random.SeedSequence(
        example_seed, spawn_key=(SEED_NAMESPACES[namespace], CAPTION_STREAM)))


def example_caption(canonical: str, captions: str, example_seed: int, *,
                    canonical_share: float = DEFAULT_CANONICAL_SHARE,
                    namespace: str = "train") -> Caption:
    """The caption of an example whose canonical caption is `canonical` under caption mode
    `captions` (CAPTION_MODES; `canonical_share` for "mix"), from its caption stream."""
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_MODES)}, got {captions!r}")
    parsed = parse_prompt(canonical)
    if captions == "canonical":
        return canonical_caption(parsed)
    share = canonical_share if captions == "mix" else 0.0
    return training_caption(parsed, caption_rng(namespace, example_seed), share)


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
    captions: str = "canonical"  # caption mode: canonical, paraphrase or mix
    canonical_share: float | None = None  # mix: share of canonical captions; else None
    caption_language_version: int | None = None  # paraphrase, mix: pictor.data.captions'


def _render_chunk(task: tuple[str, int, int, list[str], int, str, str, float]) -> list[dict]:
    """Render images [start, start + len(categories)): imagefolder metadata records (PNG files
    written), or shard records (pictor.data.records.SHARD_SCHEMA, PNG bytes inside)."""
    out_dir, seed, start, categories, digits, fmt, captions, canonical_share = task
    records = []
    for offset, category in enumerate(categories):
        index = start + offset
        example_seed = train_example_seed(seed, index)
        prompt, scene = sample_prompt_and_scene(category, example_rng("train", example_seed))
        caption = example_caption(prompt, captions, example_seed,
                                  canonical_share=canonical_share)
        # category + seed rebuild the scene; canonical + captions the caption (module doc)
        truth = {"category": category, "seed": example_seed, "canonical": prompt,
                 "captions": caption_label(caption)}
        name = f"{index:0{digits}d}"
        image = render_scene(scene, validate=False)
        if fmt == "imagefolder":
            image.save(Path(out_dir) / f"{name}.png", compress_level=1)
            records.append({"file_name": f"{name}.png", "text": caption.text, **truth})
            continue
        buf = io.BytesIO()
        image.save(buf, format="PNG", compress_level=1)
        png = buf.getvalue()
        records.append({
            "key": name, "caption": caption.text, "image": png, "width": image.width,
            "height": image.height, "sha256": hashlib.sha256(png).hexdigest(),
            "source": f"pictor-synth:train:{example_seed}", "source_format": "PNG",
            "source_width": image.width, "source_height": image.height,
            "extra": json.dumps(truth, sort_keys=True)})
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
    format: str = "imagefolder",
    captions: str = "canonical",
    canonical_share: float = DEFAULT_CANONICAL_SHARE,
) -> SynthConfig:
    """Render `num_images` training examples into `out_dir` (identical for any `workers`).

    `mix` maps categories to weights (None: all six equally). `workers` processes render in
    parallel (None: all CPUs this process may use; 1: no pool). `format` is "imagefolder" or
    "shards"; `captions` is "canonical", "paraphrase" or "mix" (`canonical_share` canonical)
    (see the module docstring). A folder that already holds a data set of that format is
    refused unless `overwrite` (which rewrites it, leaving other files).
    """
    from tqdm import tqdm

    if not 1 <= num_images <= MAX_IMAGES_PER_RUN:
        raise ValueError(f"num_images must be in [1, {MAX_IMAGES_PER_RUN}], got {num_images}")
    if not 0 <= seed < MAX_RUN_SEED:
        raise ValueError(f"seed must be in [0, {MAX_RUN_SEED}) (see pictor.data.synth), got {seed}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if format not in SYNTH_FORMATS:
        raise ValueError(f"format must be one of {', '.join(SYNTH_FORMATS)}, got {format!r}")
    if captions not in CAPTION_MODES:
        raise ValueError(f"captions must be one of {', '.join(CAPTION_MODES)}, got {captions!r}")
    check_canonical_share(canonical_share)
    out = Path(out_dir)
    config = SynthConfig(
        num_images=num_images, seed=seed, mix=validate_mix(mix), captions=captions,
        canonical_share=canonical_share if captions == "mix" else None,
        caption_language_version=None if captions == "canonical" else CAPTION_LANGUAGE_VERSION)
    categories = allocate_categories(num_images, mix, seed)
    digits = max(6, len(str(num_images - 1)))
    tasks = [
        (str(out), seed, start, categories[start : start + _CHUNK_SIZE], digits, format,
         captions, canonical_share)
        for start in range(0, num_images, _CHUNK_SIZE)
    ]
    if format == "shards":
        _write_shards(out, config, tasks, workers, overwrite, progress)
        return config
    metadata_path = out / "metadata.jsonl"
    if metadata_path.exists() and not overwrite:
        raise ValueError(
            f"{metadata_path} exists: choose a new folder or overwrite it (overwrite=True, CLI --overwrite)"
        )
    out.mkdir(parents=True, exist_ok=True)

    bar = tqdm(total=num_images, unit="img", desc="synth", disable=not progress)
    with open(metadata_path, "w", encoding="utf-8") as metadata:
        try:
            for records in _rendered(tasks, workers):
                metadata.writelines(json.dumps(record) + "\n" for record in records)
                bar.update(len(records))
        finally:
            bar.close()
    (out / "synth_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    return config


def _rendered(tasks: list, workers: int):
    """_render_chunk over the tasks, in task order, in `workers` processes (1: no pool)."""
    if workers == 1:
        yield from map(_render_chunk, tasks)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(tasks)))
    try:
        yield from pool.map(_render_chunk, tasks)  # results come back in task order
    finally:
        pool.shutdown(cancel_futures=True)


def _write_shards(out: Path, config: SynthConfig, tasks: list, workers: int, overwrite: bool,
                  progress: bool) -> None:
    """The "shards" format: records streamed into a ShardWriter, then the manifest."""
    import pyarrow as pa
    from tqdm import tqdm

    from pictor.data.records import SHARD_SCHEMA
    from pictor.data.shapes import CANVAS_SIZE_PX
    from pictor.data.shards import (
        Manifest,
        PrepareCounts,
        ShardWriter,
        prepare_output,
        write_manifest,
    )

    prepare_output(out, overwrite)
    writer = ShardWriter(out)
    bar = tqdm(total=config.num_images, unit="img", desc="synth", disable=not progress)
    try:
        for records in _rendered(tasks, workers):
            writer.write(pa.Table.from_pylist(records, schema=SHARD_SCHEMA))
            bar.update(len(records))
    finally:
        bar.close()
    shards = writer.close()
    (out / "synth_config.json").write_text(json.dumps(asdict(config), indent=2) + "\n")
    write_manifest(out, Manifest(
        image_size=CANVAS_SIZE_PX, shards=shards,
        counts=PrepareCounts(read=config.num_images, written=config.num_images),
        created_by={"tool": "pictor data synth", "synth_config": asdict(config)}))
