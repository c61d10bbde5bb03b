"""The prepare job: input layout -> per-record transform -> de-duplication -> shards + report.

`prepare_dataset` is what `pictor data prepare` runs. It detects the input layout
(pictor.data.inputs), hands the records to an engine, and writes the manifest with the counts
and `rejects.jsonl` (pictor.data.shards). Two engines run the same transform
(pictor.data.prepare) and the same rules, so they write the same records in the same order:

- "local": a process pool on this machine (this module);
- "spark": `local[*]` or any cluster through `master` (pictor.data.spark, imported only then).

Rules both engines follow:
- order: records are sorted by (key, caption); shards hold them in that order;
- exact de-duplication: among records that passed every check, those with equal sha256 of
  their source bytes keep the first in that order; the others are skipped as `duplicate`
  with the kept key in their detail;
- every record read is written or rejected: read = written + duplicates + sum(skipped);
- rejects are listed sorted by (key, reason, detail).

Shard boundaries (how many records per file) may differ between engines; the sequence of
records read through the manifest does not.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from pictor.data.files import real_root
from pictor.data.inputs import InputSpec, detect_input, listing_records, tar_prefix, tar_records
from pictor.data.prepare import PrepareOptions, prepare_batch
from pictor.data.records import (
    PREPARED_SCHEMA,
    RAW_SCHEMA,
    REJECT_SCHEMA,
    STATUS_DUPLICATE,
    STATUS_OK,
)
from pictor.data.shards import (
    DEFAULT_RECORDS_PER_SHARD,
    Manifest,
    PrepareCounts,
    ShardInfo,
    ShardWriter,
    prepare_output,
    write_manifest,
    write_rejects,
)

ENGINES = ("local", "spark")
# (column, order, nulls): Spark's orderBy puts nulls first in ascending order
RECORD_ORDER = [("key", "ascending", "at_start"), ("caption", "ascending", "at_start")]
REJECT_ORDER = [("key", "ascending", "at_start"), ("reason", "ascending", "at_start"),
                ("detail", "ascending", "at_start")]
TASK_SIZE = 64  # records per local task (and per Arrow batch): small, so memory stays flat

T = TypeVar("T")


def sort_records(table: pa.Table, order: list[tuple[str, str, str]]) -> pa.Table:
    """Sorted like Spark's orderBy: byte-wise strings, nulls first."""
    if table.num_rows == 0:
        return table
    return table.take(pc.sort_indices(table, sort_keys=order))


def prepare_dataset(input_path: str | Path, out: str | Path,
                    options: PrepareOptions | None = None, *, engine: str = "local",
                    workers: int | None = None, master: str | None = None,
                    partitions: int | None = None, spark: Any = None,
                    records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
                    overwrite: bool = False, progress: bool = False,
                    allow_outside_root: bool = False) -> Manifest:
    """Prepare INPUT into a shard folder `out`; returns the manifest written there.

    Bad input (unknown layout, a metadata file that cannot be read or names no image column)
    is a ValueError; bad *records* never are, nor bad lines of a metadata file: they are
    counted and listed in rejects.jsonl. Every file read must lie inside INPUT's folder once
    symlinks are resolved, unless allow_outside_root (pictor.data.files).
    """
    options = options or PrepareOptions()
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    spec = detect_input(input_path)
    options = dataclasses.replace(
        options, allowed_root=None if allow_outside_root else real_root(spec.root))
    out = prepare_output(out, overwrite)
    start = time.perf_counter()
    if engine == "local":
        shards, rejects, read, cleaned = run_local(spec, out, options, workers=workers,
                                                   records_per_shard=records_per_shard,
                                                   progress=progress)
        settings: dict[str, Any] = {"workers": workers or default_workers()}
    else:
        from pictor.data.spark import run_spark

        shards, rejects, read, cleaned, settings = run_spark(
            spec, out, options, master=master, partitions=partitions, spark=spark,
            records_per_shard=records_per_shard, progress=progress)
    written = sum(s.num_records for s in shards)
    counts = PrepareCounts.from_rejects(read, written, rejects, captions_cleaned=cleaned)
    write_rejects(out, rejects)
    manifest = Manifest(
        image_size=options.image_size, shards=shards, counts=counts,
        created_by={"tool": "pictor data prepare", "engine": engine, **settings,
                    "input": str(Path(input_path).absolute()), "layout": spec.layout,
                    "options": options.to_dict(),
                    "seconds": round(time.perf_counter() - start, 3)})
    write_manifest(out, manifest)
    return manifest


# ----------------------------------------------------------------------------------------------
# De-duplication (streaming: records arrive in order)
# ----------------------------------------------------------------------------------------------


class Deduplicator:
    """Splits ordered prepared batches into (shard records, rejects)."""

    def __init__(self) -> None:
        self.first_key: dict[str, str] = {}  # sha256 -> key of the record kept

    def split(self, prepared: pa.Table) -> tuple[pa.Table, pa.Table]:
        status = prepared.column("status").to_pylist()
        sha = prepared.column("sha256").to_pylist()
        keys = prepared.column("key").to_pylist()
        keep, duplicate = [], []
        for i, (s, h) in enumerate(zip(status, sha, strict=True)):
            if s != STATUS_OK:
                continue
            if h in self.first_key:
                duplicate.append(i)
            else:
                self.first_key[h] = keys[i]
                keep.append(i)
        kept = prepared.take(pa.array(keep, pa.int64()))
        dups = prepared.take(pa.array(duplicate, pa.int64()))
        dups = dups.set_column(dups.schema.get_field_index("status"), "status",
                               pa.array([STATUS_DUPLICATE] * len(duplicate), pa.string()))
        dups = dups.set_column(dups.schema.get_field_index("reason"), "reason",
                               pa.array(["duplicate"] * len(duplicate), pa.string()))
        dups = dups.set_column(dups.schema.get_field_index("detail"), "detail",
                               pa.array([f"same bytes as {self.first_key[sha[i]]}"
                                         for i in duplicate], pa.string()))
        skipped = prepared.filter(pc.not_equal(prepared.column("status"), STATUS_OK))
        rejects = pa.concat_tables([skipped.select(REJECT_SCHEMA.names),
                                    dups.select(REJECT_SCHEMA.names)])
        return kept, rejects


# ----------------------------------------------------------------------------------------------
# The local engine
# ----------------------------------------------------------------------------------------------


def default_workers() -> int:
    """The CPUs this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def chunk_records(records: list[dict[str, Any]], size: int) -> list[list[dict[str, Any]]]:
    """Consecutive chunks of about `size` records; records with equal keys stay together, so
    sorting within chunks keeps the global (key, caption) order."""
    chunks: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    for record in records:
        if len(current) >= size and record["key"] != current[-1]["key"]:
            chunks.append(current)
            current = []
        current.append(record)
    if current:
        chunks.append(current)
    return chunks


def tar_batches(tar_path: str, prefix: str, options: PrepareOptions,
                batch_size: int = TASK_SIZE) -> Iterator[pa.RecordBatch]:
    """Raw batches of one WebDataset tar."""
    records = tar_records(tar_path, prefix, options.max_file_bytes, options.allowed_root)
    while chunk := list(islice(records, batch_size)):
        yield pa.RecordBatch.from_pylist(chunk, schema=RAW_SCHEMA)


def _run_task(task: tuple[str, Any], options: PrepareOptions) -> pa.Table:
    """One local task -> its prepared records, sorted (runs in a worker process)."""
    kind, payload = task
    if kind == "rows":
        batches = [prepare_batch(pa.RecordBatch.from_pylist(payload, schema=RAW_SCHEMA),
                                 options)]
    else:
        tar_path, prefix = payload
        batches = [prepare_batch(b, options) for b in tar_batches(tar_path, prefix, options)]
    return sort_records(pa.Table.from_batches(batches, schema=PREPARED_SCHEMA), RECORD_ORDER)


def local_tasks(spec: InputSpec, allowed_root: str | None) -> list[tuple[str, Any]]:
    """Tasks in key order: chunks of listed records, or one task per tar."""
    if spec.layout == "webdataset":
        # sorted by the prefix *with* its separator, the order of the keys it starts
        tars = sorted(spec.files, key=lambda p: tar_prefix(spec, p) + "/")
        return [("tar", (p, tar_prefix(spec, p))) for p in tars]
    return [("rows", chunk)
            for chunk in chunk_records(listing_records(spec, allowed_root), TASK_SIZE)]


def ordered_map(fn: Callable[[Any], T], items: Iterable[Any], workers: int) -> Iterator[T]:
    """map(fn, items) over a process pool, results in order, at most 4 tasks per worker in
    flight (memory stays flat however long the input)."""
    if workers <= 1:
        yield from map(fn, items)
        return
    it = iter(items)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(fn, item) for item in islice(it, 4 * workers))
        while pending:
            result = pending.popleft().result()
            for item in islice(it, 1):
                pending.append(pool.submit(fn, item))
            yield result


def run_local(spec: InputSpec, out: Path, options: PrepareOptions, *, workers: int | None,
              records_per_shard: int,
              progress: bool) -> tuple[list[ShardInfo], pa.Table, int, int]:
    """The local engine: (shards written, rejects sorted, records read, captions cleaned)."""
    from tqdm import tqdm

    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    tasks = local_tasks(spec, options.allowed_root)
    writer = ShardWriter(out, records_per_shard)
    dedup = Deduplicator()
    rejects: list[pa.Table] = [REJECT_SCHEMA.empty_table()]
    read = cleaned = 0
    bar = tqdm(unit="rec", desc="prepare", disable=not progress)
    try:
        for prepared in ordered_map(functools.partial(_run_task, options=options), tasks,
                                    min(workers, max(1, len(tasks)))):
            read += prepared.num_rows
            cleaned += count_cleaned(prepared)
            kept, rejected = dedup.split(prepared)
            writer.write(kept)
            rejects.append(rejected)
            bar.update(prepared.num_rows)
    finally:
        bar.close()
    shards = writer.close()
    return shards, sort_records(pa.concat_tables(rejects), REJECT_ORDER), read, cleaned


def count_cleaned(prepared: pa.Table) -> int:
    """Records that passed with invisible caption characters removed (an ok record's detail
    says which; pictor.data.prepare.check_caption)."""
    ok = pc.equal(prepared.column("status"), STATUS_OK)
    return pc.sum(pc.and_(ok, pc.is_valid(prepared.column("detail")))).as_py() or 0
