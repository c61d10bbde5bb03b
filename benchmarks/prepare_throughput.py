"""Data preparation throughput (images/s): 512 x 512 JPEGs + captions -> 64 x 64 shards.

Three ways to do the same job on the same 5,000 generated JPEGs (image + same-name .txt), all
writing Parquet with 64 x 64 PNGs and the captions:

- "Pillow loop": the plain single-process baseline: open, convert to RGB, centre-crop and
  resize (bicubic), encode PNG, read the caption; one Parquet file at the end. No checks.
- "local engine": `pictor data prepare --engine local` (all CPUs): the full per-record
  transform (checks, sha256, EXIF, colour modes, JPEG draft decoding) in a process pool, plus
  de-duplication, sorted shards, the manifest and the report.
- "Spark local[2]": `pictor data prepare --engine spark` on a warm local[2] session (the JVM
  start is measured once, separately, and reported beside it).
- "local engine, 1 worker": the transform alone, to separate its cost from the pool's gain.

Methods run interleaved (each run takes every method in turn, the order rotating) and the
median of the runs is reported, because the machine may be shared. Captions are checked with
the word rule (`--text-encoder none`) unless --tokenizer minilm is given.

    .venv/bin/python benchmarks/prepare_throughput.py              # ~10 min on 2 idle cores
    .venv/bin/python benchmarks/prepare_throughput.py --num-images 500 --runs 1   # a smoke run
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageOps

from common import (
    RESULTS_DIR,
    environment,
    markdown_table,
    median,
    update_markdown_section,
    write_json,
)

NAME = "prepare_throughput"
SOURCE_SIZE = 512
TARGET_SIZE = 64


def make_jpegs(folder: Path, num_images: int, seed: int = 0) -> None:
    """num_images photo-like 512 x 512 JPEGs (quality 90) with .txt captions, made once."""
    marker = folder / f".complete-{num_images}"
    if marker.is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SOURCE_SIZE, 0:SOURCE_SIZE].astype(np.float32) / SOURCE_SIZE
    for i in range(num_images):
        f = rng.uniform(2, 12, size=(3, 2)).astype(np.float32)
        phase = rng.uniform(0, 6.28, size=3).astype(np.float32)
        img = np.stack([127 + 110 * np.sin(f[c, 0] * 6.28 * x + phase[c])
                        * np.cos(f[c, 1] * 6.28 * y) for c in range(3)], axis=-1)
        img += rng.normal(0, 8, size=(SOURCE_SIZE // 8, SOURCE_SIZE // 8, 3)).repeat(
            8, 0).repeat(8, 1).astype(np.float32)  # blotchy texture, JPEG-realistic sizes
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(
            folder / f"{i:05d}.jpg", quality=90)
        (folder / f"{i:05d}.txt").write_text(f"a synthetic photo number {i}")
    marker.touch()


class LoadSampler:
    """The 1-minute load average every `period_seconds` while the benchmark runs (the machine
    is shared: this says how busy it was, beside the numbers)."""

    def __init__(self, period_seconds: float = 5.0) -> None:
        self.samples: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(period_seconds,), daemon=True)

    def _run(self, period_seconds: float) -> None:
        while not self._stop.wait(period_seconds):
            self.samples.append(os.getloadavg()[0])

    def __enter__(self) -> LoadSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def summary(self) -> dict[str, float]:
        s = sorted(self.samples) or [float("nan")]
        return {"min": round(s[0], 2), "median": round(median(s), 2), "max": round(s[-1], 2)}


def pillow_loop(source: Path, out: Path) -> int:
    """The plain baseline (see the module docstring); returns records written."""
    rows = []
    for path in sorted(source.glob("*.jpg")):
        with Image.open(path) as im:
            small = ImageOps.fit(im.convert("RGB"), (TARGET_SIZE, TARGET_SIZE),
                                 method=Image.Resampling.BICUBIC)
        buf = io.BytesIO()
        small.save(buf, format="PNG", compress_level=1)
        rows.append({"key": path.name, "caption": path.with_suffix(".txt").read_text(),
                     "image": buf.getvalue()})
    out.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), out / "shard-00000.parquet", compression="zstd")
    return len(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--num-images", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=3, help="timed runs per method")
    parser.add_argument("--workdir", default="/tmp/pictor-prepare-bench",
                        help="where the JPEGs and outputs go (JPEGs are reused across runs)")
    parser.add_argument("--tokenizer", choices=("none", "minilm"), default="none",
                        help="caption token counting: word rule (default) or MiniLM's tokenizer")
    parser.add_argument("--no-spark", action="store_true", help="skip the Spark rows")
    parser.add_argument("--update-markdown", action="store_true",
                        help="also write the table into BENCHMARKS.md")
    parser.add_argument("--markdown-only", action="store_true",
                        help="measure nothing: rewrite the BENCHMARKS.md section from the last "
                             "results JSON")
    args = parser.parse_args()
    if args.markdown_only:
        update_markdown_section(NAME, render(json.loads((RESULTS_DIR / f"{NAME}.json").read_text())))
        return

    from pictor.data.engine import default_workers, prepare_dataset
    from pictor.data.prepare import PrepareOptions

    work = Path(args.workdir)
    source = work / f"jpegs-{args.num_images}"
    start = time.perf_counter()
    make_jpegs(source, args.num_images)
    print(f"{args.num_images} JPEGs ready in {time.perf_counter() - start:.0f} s "
          f"({sum(p.stat().st_size for p in source.glob('*.jpg')) / args.num_images / 1e3:.0f}"
          " KB each)", flush=True)

    tokenizer = None
    if args.tokenizer == "minilm":
        from pictor.text.encoders import minilm_path

        tokenizer = str(minilm_path())
    options = PrepareOptions(image_size=TARGET_SIZE, tokenizer_path=tokenizer)
    workers = default_workers()

    def engine(**kwargs: Any) -> Callable[[Path], int]:
        def run(out: Path) -> int:
            return prepare_dataset(source, out, options, overwrite=True, **kwargs).counts.written
        return run

    methods: dict[str, Callable[[Path], int]] = {
        "Pillow loop (1 process)": lambda out: pillow_loop(source, out),
        f"local engine ({workers} workers)": engine(engine="local", workers=workers),
        "local engine (1 worker)": engine(engine="local", workers=1),
    }
    spark_start_seconds = None
    session = None
    if not args.no_spark:
        from pictor.data.spark import spark_session

        t = time.perf_counter()
        session = spark_session("local[2]")
        session.sparkContext.setLogLevel("ERROR")
        session.range(1).collect()
        spark_start_seconds = time.perf_counter() - t
        methods["Spark local[2]"] = engine(engine="spark", spark=session)

    env_before = environment()
    seconds: dict[str, list[float]] = {m: [] for m in methods}
    names = list(methods)
    with LoadSampler() as sampler:
        for r in range(args.runs):
            for k in range(len(names)):
                name = names[(r + k) % len(names)]
                out = work / f"out-{k}"
                shutil.rmtree(out, ignore_errors=True)
                t = time.perf_counter()
                written = methods[name](out)
                seconds[name].append(time.perf_counter() - t)
                if written != args.num_images:
                    raise RuntimeError(f"{name} wrote {written} of {args.num_images} records")
            print(f"run {r + 1}/{args.runs}: " + ", ".join(
                f"{n} {args.num_images / s[-1]:.0f} img/s" for n, s in seconds.items()), flush=True)
    load = sampler.summary()
    env_after = environment()
    if session is not None:
        session.stop()

    baseline = median(seconds[names[0]])
    results: dict[str, dict[str, Any]] = {}
    for name in names:
        med = median(seconds[name])
        results[name] = {
            "seconds_median": round(med, 2), "seconds_runs": [round(s, 2) for s in seconds[name]],
            "images_per_second_median": round(args.num_images / med, 1),
            "images_per_second_runs": [round(args.num_images / s, 1) for s in seconds[name]],
            "speedup_vs_pillow_loop": round(baseline / med, 2)}
    data = {"settings": vars(args) | {"source_size": SOURCE_SIZE, "target_size": TARGET_SIZE,
                                      "resize": options.resize, "workers": workers,
                                      "spark_session_start_seconds": spark_start_seconds},
            "environment": env_before, "load_average_1min_after": env_after["load_average_1min"],
            "load_average_1min_during": load, "results": results}
    write_json(NAME, data)
    body = render(data)
    print()
    print(body)
    if args.update_markdown:
        update_markdown_section(NAME, body)


def render(data: dict[str, Any]) -> str:
    """The BENCHMARKS.md section for a results JSON written by this script."""
    settings, env, load = data["settings"], data["environment"], data["load_average_1min_during"]
    rows = []
    for name, r in data["results"].items():
        ips = r["images_per_second_runs"]
        rows.append([name, f"{r['images_per_second_median']:.0f}", f"{min(ips):.0f}-{max(ips):.0f}",
                     f"{r['seconds_median']:.1f}", f"{r['speedup_vs_pillow_loop']:.2f}x"])
    table = markdown_table(["method", "img/s (median)", "range", "seconds", "vs Pillow loop"],
                           rows)
    spark_start = settings.get("spark_session_start_seconds")
    spark_note = (f" The Spark session's start ({spark_start:.0f} s) is not included."
                  if spark_start is not None else "")
    return (f"{settings['num_images']} JPEGs of {settings['source_size']} x "
            f"{settings['source_size']} (+ .txt captions) -> {settings['target_size']} x "
            f"{settings['target_size']} PNG records in Parquet shards ({settings['resize']}), "
            f"{env['cpu']} x {env['cpu_count']}. Median of "
            f"{settings['runs']} interleaved runs; 1-min load average {load['min']:.1f}-{load['max']:.1f} "
            f"(median {load['median']:.1f}) while it ran, on a shared machine: compare ratios, "
            f"not absolute numbers.{spark_note} The engines decode JPEGs in draft mode (DCT "
            f"scaling to no less than twice the target size) and the plain loop does not: that is "
            f"most of the 1-worker gain. Written by `benchmarks/prepare_throughput.py` "
            f"({env['date_utc']}; raw: `benchmarks/results/{NAME}.json`).\n\n" + table)


if __name__ == "__main__":
    main()
