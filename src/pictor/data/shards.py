"""Training shards on disk: Parquet files of records plus a JSON manifest.

A shard folder holds

    manifest.json          format, image size, the shards in order with their record counts
                           and sha256, how they were made, and the prepare counts (read,
                           written, skipped by reason, duplicates)
    shard-00000.parquet    records in pictor.data.records.SHARD_SCHEMA, sorted by key
    shard-00001.parquet    ...
    rejects.jsonl          one line per record that was not written: key, source, status,
                           reason, detail, sha256 (absent when every record was written)
    prepared/              optional text embeddings and latents (pictor.data.loader)

The manifest is the contract: readers take the shards it lists, in its order, and nothing
else; it is written last and atomically, so a folder with a manifest is complete.
Shards hold row groups of ROW_GROUP_SIZE records, so a streaming reader needs little memory.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from pictor.data.records import (
    REJECT_SCHEMA,
    SHARD_SCHEMA,
    STATUS_DUPLICATE,
    conform,
)

FORMAT = "pictor-shards"
FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
REJECTS_FILE = "rejects.jsonl"
PREPARED_DIR = "prepared"
SHARD_NAME = "shard-{index:05d}.parquet"
DEFAULT_RECORDS_PER_SHARD = 10_000  # ~10-100 MB per shard at 64 x 64
ROW_GROUP_SIZE = 1_000
COMPRESSION = "zstd"  # the captions and keys compress; the PNG bytes barely do


@dataclass
class ShardInfo:
    file: str         # name inside the shard folder
    num_records: int
    num_bytes: int
    sha256: str       # of the file: the data's identity for caches


@dataclass
class PrepareCounts:
    """What happened to the records of an input: read = written + duplicates + sum(skipped)."""

    read: int = 0
    written: int = 0
    duplicates: int = 0
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> records
    # records that passed after invisible characters (zero-width, bidi marks, private use)
    # were removed from their caption; duplicates included
    captions_cleaned: int = 0

    @classmethod
    def from_rejects(cls, read: int, written: int, rejects: pa.Table,
                     captions_cleaned: int = 0) -> PrepareCounts:
        statuses = rejects.column("status").to_pylist()
        reasons = rejects.column("reason").to_pylist()
        skipped = Counter(r for s, r in zip(statuses, reasons, strict=True)
                          if s != STATUS_DUPLICATE)
        counts = cls(read=read, written=written,
                     duplicates=sum(s == STATUS_DUPLICATE for s in statuses),
                     skipped=dict(sorted(skipped.items())), captions_cleaned=captions_cleaned)
        if counts.read != counts.written + counts.duplicates + sum(counts.skipped.values()):
            raise RuntimeError(f"record counts do not add up: {counts}")  # a bug, not bad input
        return counts


@dataclass
class Manifest:
    image_size: int                 # every image is image_size x image_size RGB
    shards: list[ShardInfo]
    counts: PrepareCounts
    created_by: dict[str, Any]      # tool, engine, options, input, seconds
    prepared: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # kind -> files
    format: str = FORMAT
    version: int = FORMAT_VERSION

    @property
    def num_records(self) -> int:
        return sum(s.num_records for s in self.shards)

    def to_json(self) -> str:
        data = asdict(self)
        data["num_records"] = self.num_records
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> Manifest:
        try:
            data = json.loads(text)
            if data.get("format") != FORMAT:
                raise ValueError(f"format is {data.get('format')!r}, not {FORMAT!r}")
            if data.get("version") != FORMAT_VERSION:
                raise ValueError(f"version {data.get('version')} is not {FORMAT_VERSION}; "
                                 "re-run `pictor data prepare` with this pictor")
            return cls(image_size=int(data["image_size"]),
                       shards=[ShardInfo(**s) for s in data["shards"]],
                       counts=PrepareCounts(**data["counts"]),
                       created_by=dict(data.get("created_by", {})),
                       prepared=dict(data.get("prepared", {})))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise ValueError(f"{where} is not a valid shard manifest: {error}") from None


# ----------------------------------------------------------------------------------------------
# Folders
# ----------------------------------------------------------------------------------------------


def is_shard_folder(path: str | Path) -> bool:
    return (Path(path) / MANIFEST_FILE).is_file()


def prepare_output(out: str | Path, overwrite: bool) -> Path:
    """Make `out` ready for a new shard set: refuse a finished one unless `overwrite`, in which
    case its shards, rejects, prepared tensors and manifest (our files only) are removed."""
    out = Path(out)
    if is_shard_folder(out) or any(out.glob("shard-*.parquet")):
        if not overwrite:
            raise ValueError(f"{out} already holds shards: choose a new folder or overwrite it "
                             "(--overwrite)")
        (out / MANIFEST_FILE).unlink(missing_ok=True)  # first: the folder is no longer complete
        for path in out.glob("shard-*.parquet"):
            path.unlink()
        (out / REJECTS_FILE).unlink(missing_ok=True)
        shutil.rmtree(out / PREPARED_DIR, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def file_sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def shard_info(path: str | Path) -> ShardInfo:
    path = Path(path)
    return ShardInfo(file=path.name, num_records=pq.read_metadata(path).num_rows,
                     num_bytes=path.stat().st_size, sha256=file_sha256(path))


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def write_manifest(out: str | Path, manifest: Manifest) -> Path:
    path = Path(out) / MANIFEST_FILE
    _write_atomic(path, manifest.to_json())
    return path


def read_manifest(folder: str | Path) -> Manifest:
    path = Path(folder) / MANIFEST_FILE
    if not path.is_file():
        raise ValueError(f"{folder} is not a shard folder: {path} is missing (make one with "
                         "`pictor data prepare` or `pictor data synth --format shards`)")
    return Manifest.from_json(path.read_text(encoding="utf-8"), str(path))


def write_rejects(out: str | Path, rejects: pa.Table) -> Path | None:
    """rejects.jsonl, one JSON object per row (in the given order); nothing when empty."""
    path = Path(out) / REJECTS_FILE
    if rejects.num_rows == 0:
        path.unlink(missing_ok=True)
        return None
    rows = conform(rejects, REJECT_SCHEMA).to_pylist()
    _write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def read_rejects(folder: str | Path) -> list[dict[str, Any]]:
    path = Path(folder) / REJECTS_FILE
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]


# ----------------------------------------------------------------------------------------------
# Writing and reading shards
# ----------------------------------------------------------------------------------------------


class ShardWriter:
    """Appends SHARD_SCHEMA tables to shard-NNNNN.parquet files of `records_per_shard` rows."""

    def __init__(self, out: str | Path, records_per_shard: int = DEFAULT_RECORDS_PER_SHARD,
                 row_group_size: int = ROW_GROUP_SIZE) -> None:
        if records_per_shard < 1:
            raise ValueError(f"records_per_shard must be >= 1, got {records_per_shard}")
        self.out = Path(out)
        self.records_per_shard = records_per_shard
        self.row_group_size = min(row_group_size, records_per_shard)
        self.shards: list[ShardInfo] = []
        self._writer: pq.ParquetWriter | None = None
        self._path: Path | None = None
        self._rows_in_shard = 0
        self._pending: list[pa.Table] = []
        self._pending_rows = 0

    def write(self, table: pa.Table | pa.RecordBatch) -> None:
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        table = conform(table, SHARD_SCHEMA)
        while table.num_rows:
            room = self.records_per_shard - self._rows_in_shard - self._pending_rows
            head, table = table.slice(0, room), table.slice(room)
            self._pending.append(head)
            self._pending_rows += head.num_rows
            if self._pending_rows >= self.row_group_size or \
                    self._rows_in_shard + self._pending_rows == self.records_per_shard:
                self._flush()

    def _flush(self) -> None:
        if not self._pending_rows:
            return
        if self._writer is None:
            self._path = self.out / SHARD_NAME.format(index=len(self.shards))
            self._writer = pq.ParquetWriter(self._path, SHARD_SCHEMA, compression=COMPRESSION)
        self._writer.write_table(pa.concat_tables(self._pending),
                                 row_group_size=self.row_group_size)
        self._rows_in_shard += self._pending_rows
        self._pending, self._pending_rows = [], 0
        if self._rows_in_shard == self.records_per_shard:
            self._close_shard()

    def _close_shard(self) -> None:
        if self._writer is not None and self._path is not None:
            self._writer.close()
            self.shards.append(shard_info(self._path))
        self._writer, self._path, self._rows_in_shard = None, None, 0

    def close(self) -> list[ShardInfo]:
        self._flush()
        self._close_shard()
        return self.shards

    @property
    def num_records(self) -> int:
        return sum(s.num_records for s in self.shards) + self._rows_in_shard + self._pending_rows


def iter_shard_batches(folder: str | Path, columns: Iterable[str] | None = None,
                       max_records: int | None = None,
                       batch_size: int = ROW_GROUP_SIZE) -> Iterator[pa.RecordBatch]:
    """Record batches of the shards in manifest order (the first `max_records` when given)."""
    manifest = read_manifest(folder)
    names = list(columns) if columns is not None else list(SHARD_SCHEMA.names)
    schema = pa.schema([SHARD_SCHEMA.field(n) for n in names])
    left = manifest.num_records if max_records is None else max_records
    for shard in manifest.shards:
        if left <= 0:
            return
        path = Path(folder) / shard.file
        if not path.is_file():
            raise ValueError(f"{path} is listed in {Path(folder) / MANIFEST_FILE} but missing")
        for batch in pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=names):
            batch = batch.slice(0, left)
            left -= batch.num_rows
            yield pa.RecordBatch.from_arrays(
                [batch.column(n).cast(schema.field(n).type) for n in names], schema=schema)
            if left <= 0:
                return


def read_shards(folder: str | Path, columns: Iterable[str] | None = None,
                max_records: int | None = None) -> pa.Table:
    """All records (or the first `max_records`) of a shard folder as one table."""
    names = list(columns) if columns is not None else list(SHARD_SCHEMA.names)
    schema = pa.schema([SHARD_SCHEMA.field(n) for n in names])
    return pa.Table.from_batches(list(iter_shard_batches(folder, names, max_records)),
                                 schema=schema)
