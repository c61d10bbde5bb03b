"""The prepare job on the local engine: every input layout, every bad file, the report, the CLI."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from messy_files import (
    EXPECTED_REASONS,
    EXPECTED_WRITTEN,
    GOOD_CAPTIONS,
    IMAGEFOLDER_REASONS,
    IMAGEFOLDER_WRITTEN,
    WEBDATASET_REASONS,
    WEBDATASET_WRITTEN,
    make_imagefolder,
    make_messy_pairs,
    make_webdataset,
)
from PIL import Image

from pictor.data.engine import prepare_dataset
from pictor.data.inputs import detect_input
from pictor.data.prepare import PrepareOptions
from pictor.data.shards import read_manifest, read_rejects, read_shards


@pytest.fixture(scope="module")
def messy(tmp_path_factory):
    return make_messy_pairs(tmp_path_factory.mktemp("messy") / "in")


def outcome(out) -> tuple[list[str], dict[str, str]]:
    keys = read_shards(out, ["key"]).column("key").to_pylist()
    return keys, {r["key"]: r["reason"] for r in read_rejects(out)}


def test_messy_folder_good_written_every_bad_one_reported(messy, tmp_path):
    out = tmp_path / "out"
    manifest = prepare_dataset(messy, out, PrepareOptions(image_size=32), workers=2)
    keys, reasons = outcome(out)
    assert keys == EXPECTED_WRITTEN
    assert reasons == EXPECTED_REASONS
    counts = manifest.counts
    assert (counts.read, counts.written, counts.duplicates) == (21, 9, 1)
    assert counts.skipped["too_many_pixels"] == 1 and sum(counts.skipped.values()) == 11
    assert read_manifest(out) == manifest and manifest.created_by["layout"] == "pairs"
    table = read_shards(out)
    captions = dict(zip(table.column("key").to_pylist(), table.column("caption").to_pylist(),
                        strict=True))
    assert captions["good_3.jpg"] == "a wide picture"
    assert captions["sub/good_2.webp"] == GOOD_CAPTIONS["sub/good_2.webp"]
    for png in table.column("image").to_pylist():
        with Image.open(io.BytesIO(png)) as im:
            assert (im.format, im.mode, im.size) == ("PNG", "RGB", (32, 32))
    rejects = {r["key"]: r for r in read_rejects(out)}
    assert rejects["good_0_copy.jpg"]["detail"] == "same bytes as good_0.jpg"
    assert rejects["good_0_copy.jpg"]["sha256"] == table.column("sha256").to_pylist()[
        EXPECTED_WRITTEN.index("good_0.jpg")]
    assert "not UTF-8" in rejects["bad_utf8.png"]["detail"]


def test_output_does_not_depend_on_workers(messy, tmp_path):
    options = PrepareOptions(image_size=16)
    prepare_dataset(messy, tmp_path / "one", options, workers=1, records_per_shard=4)
    prepare_dataset(messy, tmp_path / "two", options, workers=2, records_per_shard=4)
    for name in ("shard-00000.parquet", "shard-00002.parquet", "rejects.jsonl"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    assert len(read_manifest(tmp_path / "one").shards) == 3  # 9 records, 4 per shard


def test_imagefolder_manifest_and_webdataset_layouts(tmp_path):
    folder = make_imagefolder(tmp_path / "if")
    manifest = prepare_dataset(folder, tmp_path / "o1", workers=1)
    assert outcome(tmp_path / "o1") == (IMAGEFOLDER_WRITTEN, IMAGEFOLDER_REASONS)
    assert manifest.created_by["layout"] == "imagefolder"
    extra = read_shards(tmp_path / "o1", ["extra"]).column("extra").to_pylist()
    assert json.loads(extra[0]) == {"category": "colors", "seed": 7} and extra[1] is None

    # the same rows as a Parquet manifest of absolute paths, and as CSV metadata
    rows = [{"path": str(folder / "0.png"), "caption": "a red circle"},
            {"path": str(folder / "2.png"), "caption": "two stars"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "list.parquet")
    assert detect_input(tmp_path / "list.parquet").layout == "manifest"
    prepare_dataset(tmp_path / "list.parquet", tmp_path / "o2", workers=1)
    assert read_shards(tmp_path / "o2", ["caption"]).column("caption").to_pylist() == [
        "a red circle", "two stars"]
    # a malformed line is one rejected record naming its line; the good lines still count
    (tmp_path / "bad.jsonl").write_text('{"path": "if/0.png", "text": "x"}\n{oops\n')
    manifest = prepare_dataset(tmp_path / "bad.jsonl", tmp_path / "o3", workers=1)
    assert manifest.counts.written == 1
    [bad] = read_rejects(tmp_path / "o3")
    assert (bad["key"], bad["reason"]) == ("bad.jsonl:2", "bad_metadata")
    assert bad["detail"].startswith("line 2: not a JSON object")
    (tmp_path / "nopath.jsonl").write_text('{"text": "x"}\n')
    with pytest.raises(ValueError, match="path or file_name"):
        prepare_dataset(tmp_path / "nopath.jsonl", tmp_path / "o4")

    wds = make_webdataset(tmp_path / "wds")
    prepare_dataset(wds, tmp_path / "o5", workers=2)
    assert outcome(tmp_path / "o5") == (WEBDATASET_WRITTEN, WEBDATASET_REASONS)
    extra = read_shards(tmp_path / "o5", ["extra"]).column("extra").to_pylist()
    assert json.loads(extra[1]) == {"width": 30}


def test_cli_prepare_report_and_exit_codes(messy, tmp_path, capsys):
    from pictor.cli.main import main

    out = tmp_path / "cli"
    assert main(["data", "prepare", str(messy), "-o", str(out), "--image-size", "16",
                 "--resize", "pad", "--text-encoder", "none", "--quiet"]) == 0
    text = capsys.readouterr().out
    assert "read 21, written 9 in 1 shard(s), duplicates 1, skipped 11" in text
    assert "too_many_pixels" in text and "rejects.jsonl" in text
    assert read_manifest(out).created_by["options"]["resize"] == "pad"
    # a finished folder is refused without --overwrite; bad options are usage errors (2)
    assert main(["data", "prepare", str(messy), "-o", str(out), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "prepare", str(messy), "-o", str(tmp_path / "x"),
                 "--background", "1,2"]) == 2
    # nothing decodable: the job finishes, reports, and exits 1
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.jpg").write_bytes(b"not a jpeg")
    (bad / "a.txt").write_text("a caption")
    assert main(["data", "prepare", str(bad), "-o", str(tmp_path / "none"), "--quiet",
                 "--text-encoder", "none"]) == 1
    captured = capsys.readouterr()
    assert "corrupt_image" in captured.out and "nothing was written" in captured.err
