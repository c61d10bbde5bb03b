"""The Spark engine on a real local[2] session: same records, rejects and counts as the local
engine, for the messy folder and the other layouts. One session serves the whole module; the
tests are few because each Spark job costs seconds of JVM scheduling."""

from __future__ import annotations

import os

import pytest
from hostile_files import (
    HOSTILE_OPTIONS,
    make_hostile_imagefolder,
    make_hostile_pairs,
    make_hostile_webdataset,
)
from messy_files import (
    EXPECTED_REASONS,
    EXPECTED_WRITTEN,
    IMAGEFOLDER_REASONS,
    IMAGEFOLDER_WRITTEN,
    WEBDATASET_REASONS,
    WEBDATASET_WRITTEN,
    make_imagefolder,
    make_messy_pairs,
    make_webdataset,
)

from pictor.data.engine import prepare_dataset
from pictor.data.prepare import PrepareOptions
from pictor.data.shards import read_manifest, read_rejects, read_shards

pytest.importorskip("pyspark")
# Not marked slow: ~6 s for the JVM, ~10 s and ~6 s for the tests on 2 idle cores (about twice
# that when the machine is busy).


@pytest.fixture(scope="module")
def spark():
    from pictor.data.spark import spark_session

    # PICTOR_TEST_SPARK_MASTER=local[1] runs the module on one core (a busy machine)
    session = spark_session(os.environ.get("PICTOR_TEST_SPARK_MASTER", "local[2]"))
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


def assert_same_output(a, b) -> None:
    assert read_shards(a).equals(read_shards(b))  # same records, same order, same bytes
    assert read_rejects(a) == read_rejects(b)
    assert read_manifest(a).counts == read_manifest(b).counts


def test_spark_engine_equals_local_engine_on_messy_files(spark, tmp_path):
    messy = make_messy_pairs(tmp_path / "in")
    options = PrepareOptions(image_size=32)
    manifest = prepare_dataset(messy, tmp_path / "spark", options, engine="spark", spark=spark,
                               records_per_shard=4)
    keys = read_shards(tmp_path / "spark", ["key"]).column("key").to_pylist()
    assert keys == EXPECTED_WRITTEN
    assert {r["key"]: r["reason"] for r in read_rejects(tmp_path / "spark")} == EXPECTED_REASONS
    assert manifest.created_by["engine"] == "spark" and len(manifest.shards) >= 2
    assert not (tmp_path / "spark" / "_spark_shards").exists()
    prepare_dataset(messy, tmp_path / "local", options, engine="local", workers=2)
    assert_same_output(tmp_path / "spark", tmp_path / "local")


def test_spark_engine_on_imagefolder_and_webdataset(spark, tmp_path):
    for make, written, reasons in [(make_imagefolder, IMAGEFOLDER_WRITTEN, IMAGEFOLDER_REASONS),
                                   (make_webdataset, WEBDATASET_WRITTEN, WEBDATASET_REASONS)]:
        source = make(tmp_path / make.__name__)
        out = tmp_path / f"{make.__name__}-spark"
        prepare_dataset(source, out, engine="spark", spark=spark)
        assert read_shards(out, ["key"]).column("key").to_pylist() == written
        assert {r["key"]: r["reason"] for r in read_rejects(out)} == reasons
        prepare_dataset(source, tmp_path / f"{make.__name__}-local", workers=1)
        assert_same_output(out, tmp_path / f"{make.__name__}-local")


@pytest.mark.timeout(600)
def test_spark_engine_on_the_hostile_corpus(spark, tmp_path):
    """Malformed metadata lines, FIFOs, sockets, /dev and /etc links, a record over the memory
    budget: the Spark job finishes, every record is written or rejected with the local engine's
    reason, line numbers included (never FAILFAST, never a Java stack trace)."""
    for make in (make_hostile_pairs, make_hostile_imagefolder, make_hostile_webdataset):
        source, expected = make(tmp_path / make.__name__)
        out = tmp_path / f"{make.__name__}-spark"
        manifest = prepare_dataset(source, out, HOSTILE_OPTIONS, engine="spark", spark=spark)
        got = {k: None for k in read_shards(out, ["key"]).column("key").to_pylist()}
        got.update({r["key"]: r["reason"] for r in read_rejects(out)})
        assert got == expected, make.__name__
        assert manifest.counts.read == len(expected)
        prepare_dataset(source, tmp_path / f"{make.__name__}-local", HOSTILE_OPTIONS, workers=1)
        assert_same_output(out, tmp_path / f"{make.__name__}-local")
