"""The prepare job on Spark: the same transform, run by mapInArrow on `local[*]` or a cluster.

This and pictor.training.spark (TorchDistributor) are the only modules that import pyspark (an
optional extra: `pip install pictor[spark]`, plus Java 17+). `pictor.data.engine.prepare_dataset(..., engine="spark")` calls `run_spark`;
the rules (order, de-duplication, counts) are the engine module's, the per-record work is
pictor.data.prepare's and the input handling pictor.data.inputs', all run inside Python
workers, so both engines write the same records.

Plan (each step a DataFrame; nothing but the small reject list is collected on the driver):

    input      folder listing on the driver (pairs; images of  | spark.read text (JSONL) or
               an imagefolder; CSV metadata) -> paths only     | parquet (manifests) | tars
    raw        RAW_SCHEMA rows (inputs.parse_json_line / row_to_raw in mapInArrow: a malformed
               line is a bad_metadata record with its line number, never a failed job)
    prepared   mapInArrow(prepare_batches), Arrow batches of TASK_SIZE records; persisted
               (webdataset: tar expansion and transform fused in one mapInArrow)
    dedup      row_number() over (partition by sha256 order by key, caption) among "ok"
    shards     repartitionByRange(key, caption) + sortWithinPartitions -> Parquet (zstd),
               part files renamed shard-00000.parquet ... in partition order
    rejects    skipped + duplicates, collected as Arrow and sorted like the local engine

Folders are listed on the driver with the local engine's own function rather than Spark's
binaryFile source, because binaryFile silently skips zero-byte files (they must be reported as
empty_file) and would need Hadoop's URI forms mapped back to keys; a collection too large to
list on one machine should come as a Parquet manifest or as tar shards, which Spark reads and
distributes itself. Image bytes are read inside the workers from the paths (so a join never
shuffles them):
INPUT and OUT must be paths that the driver and every executor see alike (local folder in
local mode; NFS, /dbfs or /Volumes on a cluster). See docs/data.md for spark-submit and
Databricks.
"""

from __future__ import annotations

import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from pictor.data.engine import REJECT_ORDER, TASK_SIZE, sort_records, tar_batches
from pictor.data.inputs import (
    InputSpec,
    bad_line_raw,
    check_columns,
    first_row,
    listing_records,
    manifest_records,
    open_metadata,
    parse_json_line,
    row_to_raw,
    split_undecodable,
    tar_prefix,
    unlisted_image_raw,
    unlisted_images,
)
from pictor.data.prepare import PrepareOptions, prepare_batch, prepare_batches
from pictor.data.records import (
    PREPARED_SCHEMA,
    RAW_SCHEMA,
    REJECT_SCHEMA,
    SHARD_SCHEMA,
    STATUS_DUPLICATE,
    STATUS_OK,
    conform,
)
from pictor.data.shards import SHARD_NAME, ShardInfo, shard_info

SPARK_TMP_DIR = "_spark_shards"  # inside OUT; hidden from readers by its leading underscore
_FILE_COLUMN = "_pictor_file"     # which metadata/manifest file a row came from
_ROW_COLUMN = "_pictor_row"       # its row number in that file, from 1


def spark_session(master: str | None = None, app_name: str = "pictor-data-prepare",
                  progress: bool = True) -> Any:
    """The active session (spark-submit, Databricks) or a new one on `master` (default
    local[*]). Local sessions run their Python workers with this interpreter; progress=False
    hides Spark's console progress bar and its warnings."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and master is None:
        return active
    builder = SparkSession.builder.appName(app_name)
    launched_by_spark = "PYSPARK_GATEWAY_PORT" in os.environ  # spark-submit set the master
    if master is not None or not launched_by_spark:
        master = master or "local[*]"
        builder = builder.master(master)
    if master is not None and master.startswith("local"):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        builder = builder.config("spark.ui.enabled", "false")
    if not progress:
        builder = builder.config("spark.ui.showConsoleProgress", "false")
    session = builder.getOrCreate()
    if not progress:
        session.sparkContext.setLogLevel("ERROR")
    return session


def _spark_schema(schema: pa.Schema) -> Any:
    from pyspark.sql.pandas.types import from_arrow_schema

    return from_arrow_schema(schema)


def _raw_frame(spark: Any, records: list[dict[str, Any]]) -> Any:
    """A DataFrame of raw records built on the driver (paths and captions, no image bytes)."""
    return spark.createDataFrame(pa.Table.from_pylist(records, schema=RAW_SCHEMA))


# ----------------------------------------------------------------------------------------------
# Raw records per layout
# ----------------------------------------------------------------------------------------------


def _json_lines_raw(spark: Any, path: str, root: str) -> Any:
    """Raw records of a JSON Lines file, parsed by the local engine's own function
    (inputs.parse_json_line) in mapInArrow. Spark's JSON reader is not used: it cannot give
    line numbers, and in its FAILFAST mode one malformed line fails the job. Lines are split on
    \\n only (as the local engine does) and numbered by zipWithIndex, in file order."""
    from pyspark.sql import functions as F

    where = os.path.basename(path)
    lines = (spark.read.option("lineSep", "\n").text(path)
             .select(F.col("value").cast("binary").alias("value")))
    numbered = spark.createDataFrame(
        lines.rdd.zipWithIndex().map(lambda pair: (pair[1] + 1, bytes(pair[0][0]))),
        "line long, value binary")

    def to_raw(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = []
            for line_no, line in zip(batch.column("line").to_pylist(),
                                     batch.column("value").to_pylist(), strict=True):
                if not line.strip():
                    continue
                row, problem = parse_json_line(line, line_no)
                out.append(bad_line_raw(where, line_no, problem or "") if row is None
                           else row_to_raw(row, root, where, line_no))
            yield pa.RecordBatch.from_pylist(out, schema=RAW_SCHEMA)

    return numbered.mapInArrow(to_raw, _spark_schema(RAW_SCHEMA))


def _parquet_raw(spark: Any, files: tuple[str, ...], root: str) -> Any:
    """Raw records of Parquet manifests, numbered by row within each file from 1."""
    from pyspark.sql import functions as F

    df = spark.read.parquet(*files)
    check_columns(df.columns, files[0])
    df = (df.withColumn(_FILE_COLUMN, F.col("_metadata.file_name"))
          .withColumn(_ROW_COLUMN, F.col("_metadata.row_index") + 1))

    def to_raw(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            out = []
            for row in batch.to_pylist():
                where, line_no = row.pop(_FILE_COLUMN), row.pop(_ROW_COLUMN)
                out.append(row_to_raw(row, root, where, line_no))
            yield pa.RecordBatch.from_pylist(out, schema=RAW_SCHEMA)

    return df.mapInArrow(to_raw, _spark_schema(RAW_SCHEMA))


def _rows_raw(spark: Any, spec: InputSpec, allowed_root: str | None) -> Any:
    """Raw records of an imagefolder's metadata or of manifests. JSON Lines and Parquet are
    read by Spark; CSV (whose records may span lines) is parsed on the driver by the local
    engine's reader, so both engines number and judge its records alike."""
    root = spec.root
    suffix = Path(spec.files[0]).suffix.lower()
    if suffix == ".parquet":
        for path in spec.files:  # regular files inside the root, as the local engine checks
            open_metadata(path, allowed_root).close()
        raw = _parquet_raw(spark, spec.files, root)
    elif suffix == ".csv":
        raw = _raw_frame(spark, manifest_records(spec, allowed_root))
    else:
        first = first_row(spec.files[0], allowed_root)
        if first is not None:
            check_columns(list(first), spec.files[0])
        raw = _json_lines_raw(spark, spec.files[0], root)
    if spec.layout != "imagefolder":
        return raw
    # images the metadata does not name: the folder's listing minus the metadata's keys
    metadata_name = os.path.basename(spec.files[0])
    keys, undecodable = split_undecodable(unlisted_images(root), root)
    images = _raw_frame(spark, [unlisted_image_raw(k, root, metadata_name) for k in keys])
    raw = raw.unionByName(images.join(raw.select("key"), on="key", how="left_anti"))
    return raw.unionByName(_raw_frame(spark, undecodable)) if undecodable else raw


def _prepared(spark: Any, spec: InputSpec, options: PrepareOptions,
              partitions: int | None) -> tuple[Any, list[Any], int]:
    """The prepared DataFrame (PREPARED_SCHEMA) of any layout, the DataFrames cached on the way
    (to unpersist once it is computed) and its number of partitions."""
    schema = _spark_schema(PREPARED_SCHEMA)
    if spec.layout == "webdataset":
        tars = [(p, tar_prefix(spec, p)) for p in sorted(spec.files)]

        def expand(batches: Iterator[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
            for batch in batches:
                for row in batch.to_pylist():
                    for raw in tar_batches(row["tar"], row["prefix"], options):
                        yield prepare_batch(raw, options)

        df = spark.createDataFrame(tars, "tar string, prefix string")
        partitions = partitions or len(tars)
        return df.repartition(partitions).mapInArrow(expand, schema), [], partitions
    if spec.layout == "pairs":
        raw = _raw_frame(spark, listing_records(spec, options.allowed_root))
    else:
        raw = _rows_raw(spark, spec, options.allowed_root)
    cached = []
    if partitions is None:  # ~512 records per task, at least 4 tasks per core
        raw = raw.persist()
        cached.append(raw)
        partitions = max(4 * spark.sparkContext.defaultParallelism,
                         math.ceil(raw.count() / 512))
    prepared = raw.repartition(partitions).mapInArrow(
        lambda batches: prepare_batches(batches, options), schema)
    return prepared, cached, partitions


# ----------------------------------------------------------------------------------------------
# The job
# ----------------------------------------------------------------------------------------------


def _rename_parts(tmp: Path, out: Path) -> list[ShardInfo]:
    parts = sorted(tmp.glob("part-*.parquet"))
    shards = []
    for index, part in enumerate(parts):
        target = out / SHARD_NAME.format(index=index)
        part.replace(target)
        shards.append(shard_info(target))
    shutil.rmtree(tmp, ignore_errors=True)
    return shards


def run_spark(spec: InputSpec, out: Path, options: PrepareOptions, *, master: str | None,
              partitions: int | None, spark: Any, records_per_shard: int,
              progress: bool = True) -> tuple[list[ShardInfo], pa.Table, int, int,
                                              dict[str, Any]]:
    """The Spark engine: (shards written, rejects sorted, records read, captions cleaned,
    settings)."""
    from pyspark import StorageLevel
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    if partitions is not None and partitions < 1:
        raise ValueError(f"partitions must be >= 1, got {partitions}")
    own_session = spark is None
    if own_session:
        from pyspark.sql import SparkSession

        own_session = SparkSession.getActiveSession() is None
        spark = spark_session(master, progress=progress)
    # Session settings for this job, restored afterwards (the session may be a notebook's):
    # small Arrow batches (a batch holds image bytes), zstd shards, and as many shuffle
    # partitions as transform tasks (Spark's default 200 is far too many for small inputs).
    job_conf = {"spark.sql.execution.arrow.maxRecordsPerBatch": str(TASK_SIZE),
                "spark.sql.parquet.compression.codec": "zstd"}
    saved = {k: spark.conf.get(k, None) for k in [*job_conf, "spark.sql.shuffle.partitions"]}
    for k, v in job_conf.items():
        spark.conf.set(k, v)
    try:
        prepared, cached, num_tasks = _prepared(spark, spec, options, partitions)
        spark.conf.set("spark.sql.shuffle.partitions", str(num_tasks))
        prepared = prepared.persist(StorageLevel.MEMORY_AND_DISK)
        read = prepared.count()
        cleaned = prepared.where((F.col("status") == STATUS_OK)
                                 & F.col("detail").isNotNull()).count()
        for df in cached:
            df.unpersist()
        order = [F.col("key").asc_nulls_first(), F.col("caption").asc_nulls_first()]
        by_bytes = Window.partitionBy("sha256").orderBy(*order)
        ok = (prepared.where(F.col("status") == STATUS_OK)
              .withColumn("_rank", F.row_number().over(by_bytes))
              .withColumn("_first", F.first("key").over(by_bytes)))
        kept = ok.where(F.col("_rank") == 1).select(*SHARD_SCHEMA.names)
        duplicates = (ok.where(F.col("_rank") > 1)
                      .withColumn("status", F.lit(STATUS_DUPLICATE))
                      .withColumn("reason", F.lit("duplicate"))
                      .withColumn("detail", F.concat(F.lit("same bytes as "), F.col("_first"))))
        rejects = (prepared.where(F.col("status") != STATUS_OK).select(*REJECT_SCHEMA.names)
                   .unionByName(duplicates.select(*REJECT_SCHEMA.names)))
        num_kept = kept.count()
        shards: list[ShardInfo] = []
        if num_kept:
            tmp = out / SPARK_TMP_DIR
            num_shards = math.ceil(num_kept / records_per_shard)
            (kept.repartitionByRange(num_shards, *order).sortWithinPartitions(*order)
             .write.mode("overwrite").parquet(str(tmp)))
            shards = _rename_parts(tmp, out)
        reject_table = sort_records(conform(rejects.toArrow(), REJECT_SCHEMA), REJECT_ORDER)
        prepared.unpersist()
        settings = {"master": spark.sparkContext.master,
                    "spark_version": spark.version,
                    "default_parallelism": spark.sparkContext.defaultParallelism}
        return shards, reject_table, read, cleaned, settings
    finally:
        if own_session:
            spark.stop()
        else:
            for k, v in saved.items():
                if v is None:
                    spark.conf.unset(k)
                else:
                    spark.conf.set(k, v)
