"""Parquet shards and the manifest: rolling, order, counts, refusing to clobber a finished set."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pictor.data.records import REJECT_SCHEMA, SHARD_SCHEMA
from pictor.data.shards import (
    Manifest,
    PrepareCounts,
    ShardWriter,
    iter_shard_batches,
    prepare_output,
    read_manifest,
    read_rejects,
    read_shards,
    write_manifest,
    write_rejects,
)


def records(start: int, n: int) -> pa.Table:
    return pa.Table.from_pylist([
        {"key": f"{i:04d}", "caption": f"caption {i}", "image": bytes([i % 256]) * 3,
         "width": 1, "height": 1, "sha256": f"{i:064x}", "source": f"src/{i}",
         "source_format": "PNG", "source_width": 1, "source_height": 1, "extra": None}
        for i in range(start, start + n)], schema=SHARD_SCHEMA)


def write_set(folder, batches, records_per_shard) -> Manifest:
    writer = ShardWriter(folder, records_per_shard=records_per_shard, row_group_size=4)
    for b in batches:
        writer.write(b)
    shards = writer.close()
    n = sum(s.num_records for s in shards)
    manifest = Manifest(image_size=1, shards=shards, counts=PrepareCounts(read=n, written=n),
                        created_by={"tool": "test"})
    write_manifest(folder, manifest)
    return manifest


def test_writer_rolls_shards_and_reader_keeps_order(tmp_path):
    manifest = write_set(tmp_path, [records(0, 7), records(7, 1), records(8, 17)], 10)
    assert [s.file for s in manifest.shards] == [
        "shard-00000.parquet", "shard-00001.parquet", "shard-00002.parquet"]
    assert [s.num_records for s in manifest.shards] == [10, 10, 5]
    assert pq.ParquetFile(tmp_path / "shard-00000.parquet").metadata.num_row_groups == 3
    table = read_shards(tmp_path)
    assert table.schema == SHARD_SCHEMA
    assert table.column("key").to_pylist() == [f"{i:04d}" for i in range(25)]
    assert read_shards(tmp_path, ["caption"], max_records=12).column("caption").to_pylist() \
        == [f"caption {i}" for i in range(12)]
    assert sum(b.num_rows for b in iter_shard_batches(tmp_path, ["key"], batch_size=3)) == 25
    again = read_manifest(tmp_path)
    assert again == manifest and again.num_records == 25
    assert json.loads((tmp_path / "manifest.json").read_text())["num_records"] == 25


def test_manifest_errors_and_output_folder_rules(tmp_path):
    with pytest.raises(ValueError, match="manifest.json is missing"):
        read_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="not a valid shard manifest"):
        read_manifest(tmp_path)
    out = tmp_path / "out"
    write_set(prepare_output(out, overwrite=False), [records(0, 3)], 10)
    (out / "mine.txt").write_text("keep me")
    with pytest.raises(ValueError, match="--overwrite"):
        prepare_output(out, overwrite=False)
    prepare_output(out, overwrite=True)
    assert sorted(p.name for p in out.iterdir()) == ["mine.txt"]


def test_counts_add_up_and_rejects_round_trip(tmp_path):
    rejects = pa.Table.from_pylist([
        {"key": "a", "source": "a", "status": "skipped", "reason": "corrupt_image",
         "detail": "x", "sha256": None},
        {"key": "b", "source": "b", "status": "duplicate", "reason": "duplicate",
         "detail": "same bytes as c", "sha256": "00"},
        {"key": "d", "source": "d", "status": "skipped", "reason": "corrupt_image",
         "detail": "y", "sha256": None}], schema=REJECT_SCHEMA)
    counts = PrepareCounts.from_rejects(read=5, written=2, rejects=rejects)
    assert counts == PrepareCounts(read=5, written=2, duplicates=1,
                                   skipped={"corrupt_image": 2})
    with pytest.raises(RuntimeError, match="do not add up"):
        PrepareCounts.from_rejects(read=6, written=2, rejects=rejects)
    write_rejects(tmp_path, rejects)
    assert read_rejects(tmp_path) == rejects.to_pylist()
    write_rejects(tmp_path, REJECT_SCHEMA.empty_table())
    assert read_rejects(tmp_path) == []
