"""Hostile inputs through the local engine: every record ends written or rejected with its
reason (none dropped, none hanging, nothing read outside the input folder), the job never
fails for a record's sake, and its peak memory stays bounded. The Spark engine runs the same
corpus in test_spark.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hostile_files import (
    HOSTILE_OPTIONS,
    make_hostile_imagefolder,
    make_hostile_pairs,
    make_hostile_webdataset,
)

from pictor.data import prepare
from pictor.data.engine import prepare_dataset
from pictor.data.shards import read_manifest, read_rejects, read_shards

MAKERS = {"pairs": make_hostile_pairs, "imagefolder": make_hostile_imagefolder,
          "webdataset": make_hostile_webdataset}


def outcome(out: Path) -> dict[str, str | None]:
    written = {k: None for k in read_shards(out, ["key"]).column("key").to_pylist()}
    rejected = {r["key"]: r["reason"] for r in read_rejects(out)}
    assert not set(written) & set(rejected)
    return {**written, **rejected}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    return {name: make(base) for name, make in MAKERS.items()}


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", list(MAKERS))
def test_hostile_corpus_every_record_accounted_for(corpus, layout, tmp_path):
    source, expected = corpus[layout]
    manifest = prepare_dataset(source, tmp_path / "out", HOSTILE_OPTIONS, workers=2)
    assert outcome(tmp_path / "out") == expected
    counts = manifest.counts
    assert counts.read == len(expected)  # 0 silent drops: read = written + rejected
    assert counts.written == sum(r is None for r in expected.values())
    if layout == "pairs":
        assert len(expected) >= 30 and counts.captions_cleaned == 1
        captions = read_shards(tmp_path / "out", ["key", "caption"]).to_pylist()
        assert {"key": "cleaned.png", "caption": "a blue square"} in captions
    rejects = {r["key"]: r for r in read_rejects(tmp_path / "out")}
    if layout == "imagefolder":
        assert rejects["metadata.jsonl:2"]["detail"].startswith("line 2: not a JSON object")
        assert "bytes > 1048576" in rejects["metadata.jsonl:5"]["detail"]
        caption = read_shards(tmp_path / "out", ["caption"]).column("caption").to_pylist()
        assert "a red circle" in caption and "a red circle".replace(" c", " c") in caption
    if layout == "pairs":
        assert "/dev/zero" in rejects["zero_caption.png"]["detail"]
        assert "--allow-outside-root" in rejects["etc.png"]["detail"]
        assert "FIFO" in rejects["fifo.png"]["detail"]


@pytest.mark.timeout(300)
def test_allow_outside_root_reads_outside_but_never_devices(corpus, tmp_path):
    source, expected = corpus["pairs"]
    prepare_dataset(source, tmp_path / "out", HOSTILE_OPTIONS, workers=1,
                    allow_outside_root=True)
    got = outcome(tmp_path / "out")
    assert "outside_root" not in got.values()
    for name in ("zero.png", "urandom.png", "zero_caption.png"):
        assert got[name] == "not_regular_file", name  # a device, refused before it is opened
    assert got["parent_link.png"] is None  # a real image outside the folder, now allowed
    assert {k: v for k, v in got.items() if expected[k] != "outside_root"} == {
        k: v for k, v in expected.items() if v != "outside_root"}


def _patched_decode(data, options):
    """A decoder that crashes on one image and hangs on another (the forked children that
    prepare records inherit this patch; everything else is the real transform)."""
    if data.startswith(b"\x89PNG") and b"CRASH" in data:
        os.kill(os.getpid(), signal.SIGSEGV)
    if data.startswith(b"\x89PNG") and b"HANG" in data:
        time.sleep(3600)
    return _REAL_DECODE(data, options)


_REAL_DECODE = prepare.decode_image


@pytest.mark.timeout(120)
def test_a_record_that_kills_or_hangs_its_worker_costs_only_itself(corpus, tmp_path,
                                                                    monkeypatch):
    source, expected = corpus["pairs"]
    folder = tmp_path / "in"
    folder.mkdir()
    good = (source / "good.png").read_bytes()
    for name in ("a", "c", "e"):
        (folder / f"{name}.png").write_bytes(good + name.encode())  # distinct bytes
        (folder / f"{name}.txt").write_text(f"image {name}")
    (folder / "b.png").write_bytes(good + b"CRASH")
    (folder / "b.txt").write_text("crashes its worker")
    (folder / "d.png").write_bytes(good + b"HANG")
    (folder / "d.txt").write_text("hangs its worker")
    monkeypatch.setattr(prepare, "decode_image", _patched_decode)
    options = prepare.PrepareOptions(image_size=16, record_timeout_seconds=2)
    start = time.monotonic()
    manifest = prepare_dataset(folder, tmp_path / "out", options, workers=1)
    assert time.monotonic() - start < 60
    assert outcome(tmp_path / "out") == {"a.png": None, "b.png": "worker_crashed",
                                         "c.png": None, "d.png": "timeout", "e.png": None}
    assert manifest.counts.written == 3
    rejects = {r["key"]: r["detail"] for r in read_rejects(tmp_path / "out")}
    assert "SIGSEGV" in rejects["b.png"] and "2 s" in rejects["d.png"]


# Peak resident memory of the job's processes: this one's VmHWM (its own address space only;
# RUSAGE_SELF would also count the pytest process it was forked from, since Linux carries the
# high-water mark across exec) and RUSAGE_CHILDREN, the largest worker or forked record child.
PEAK_SCRIPT = """
import json, re, resource, sys
from pathlib import Path
from pictor.cli.main import main
code = main(sys.argv[1:])
own_kib = int(re.search(r"VmHWM:\\s+(\\d+) kB", Path("/proc/self/status").read_text()).group(1))
peak_kib = max(own_kib, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
print("PEAK " + json.dumps({"code": code, "peak_kib": peak_kib}))
"""
PEAK_BOUND_MIB = 400  # CLI process and its workers, measured ~150-250 MiB on this corpus


@pytest.mark.timeout(300)
def test_cli_on_the_hostile_corpus_exits_cleanly_with_bounded_memory(corpus, tmp_path):
    source, expected = corpus["pairs"]
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(Path(prepare.__file__).parents[2]),
                                          os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, "data", "prepare", str(source), "-o",
         str(tmp_path / "out"), "--quiet", "--text-encoder", "none", "--image-size", "16",
         "--max-file-bytes", str(HOSTILE_OPTIONS.max_file_bytes),
         "--max-record-memory-bytes", str(HOSTILE_OPTIONS.max_record_memory_bytes),
         "--workers", "2"], capture_output=True, text=True, timeout=240, env=env)
    assert "Traceback" not in run.stderr, run.stderr
    result = json.loads(run.stdout.split("PEAK ", 1)[1])
    assert result["code"] == 0
    assert f"read {len(expected)}," in run.stdout
    assert "1 caption(s) had invisible characters" in run.stdout
    assert result["peak_kib"] / 1024 < PEAK_BOUND_MIB, result
    print(f"peak RSS of the prepare job: {result['peak_kib'] / 1024:.0f} MiB")
    assert read_manifest(tmp_path / "out").counts.read == len(expected)
