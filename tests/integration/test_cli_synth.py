"""`pictor data synth` and `pictor data suites` end to end, and the data set they write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from pictor.data.captions import CANONICAL_LABEL, PARAPHRASE_LABEL, paraphrase
from pictor.data.shapes import parse_prompt, render_scene_array, sample_prompt_and_scene
from pictor.data.synth import (
    allocate_categories,
    caption_rng,
    example_caption,
    example_rng,
    synthesize,
)
from pictor.evaluation.scorer import score_image

CLI = [sys.executable, "-m", "pictor.cli.main"]


def run_cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([*CLI, *args], capture_output=True, text=True, env=env, timeout=300)


def read_metadata(folder) -> list[dict]:
    return [json.loads(line) for line in (folder / "metadata.jsonl").read_text().splitlines()]


def test_cli_synth_writes_images_with_true_captions(tmp_path):
    out = tmp_path / "tmp"
    result = run_cli("data", "synth", "--num-images", "50", "--out", str(out), "--workers", "2",
                     "--captions", "canonical")
    assert result.returncode == 0, result.stderr
    assert "wrote 50 images" in result.stdout
    records = read_metadata(out)
    assert len(records) == 50 and len(list(out.glob("*.png"))) == 50
    assert records[0].keys() == {"file_name", "text", "category", "seed", "canonical",
                                 "captions"}
    assert all(r["captions"] == CANONICAL_LABEL and r["canonical"] == r["text"] for r in records)
    assert set(Counter(r["category"] for r in records).values()) <= {8, 9}  # equal shares of 50
    for record in records:
        image = Image.open(out / record["file_name"])
        assert image.size == (64, 64) and image.mode == "RGB"
        # the caption is a true description of the image, judged from the pixels alone
        assert score_image(image, record["text"]).passed, record
        # and the metadata re-creates the image exactly
        prompt, scene = sample_prompt_and_scene(
            record["category"], example_rng("train", record["seed"])
        )
        assert prompt == record["text"]
        assert np.array_equal(render_scene_array(scene), np.asarray(image))
    config = json.loads((out / "synth_config.json").read_text())
    assert config["namespace"] == "train" and config["num_images"] == 50
    assert config["captions"] == "canonical" and config["caption_language_version"] is None

    again = run_cli("data", "synth", "--num-images", "5", "--out", str(out))
    assert again.returncode == 2 and "overwrite" in again.stderr


def test_cli_synth_mix_and_errors(tmp_path):
    out = tmp_path / "mix"
    result = run_cli(
        "data",
        "synth",
        "--num-images",
        "30",
        "--out",
        str(out),
        "--quiet",
        "--mix",
        "colors=2,position=1",
        "--seed",
        "3",
        "--workers",
        "1",
    )
    assert result.returncode == 0, result.stderr
    assert Counter(r["category"] for r in read_metadata(out)) == {"colors": 20, "position": 10}
    bad = run_cli(
        "data", "synth", "--num-images", "3", "--out", str(tmp_path / "x"), "--mix", "shapes=1"
    )
    assert bad.returncode == 2 and "shapes" in bad.stderr


def test_output_is_identical_for_any_worker_count(tmp_path):
    # 300 images span two worker tasks, so the pool really splits the work.
    synthesize(tmp_path / "one", 300, seed=5, workers=1, progress=False)
    synthesize(tmp_path / "two", 300, seed=5, workers=2, progress=False)
    assert read_metadata(tmp_path / "one") == read_metadata(tmp_path / "two")
    for name in ("000000.png", "000299.png"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    other = synthesize(tmp_path / "seed6", 20, seed=6, workers=1, progress=False)
    assert other.seed == 6
    texts = [r["text"] for r in read_metadata(tmp_path / "seed6")]
    assert texts != [r["text"] for r in read_metadata(tmp_path / "one")][:20]


def test_synthesize_rejects_bad_arguments(tmp_path):
    for kwargs, word in [
        ({"num_images": 0}, "num_images"),
        ({"num_images": 5, "seed": -1}, "seed"),
        ({"num_images": 5, "seed": 2**31}, "seed"),
        ({"num_images": 5, "workers": 0}, "workers"),
    ]:
        with pytest.raises(ValueError, match=word):
            synthesize(tmp_path / "bad", progress=False, **kwargs)


def test_category_allocation_is_exact():
    categories = allocate_categories(1000, {"colors": 1, "counting": 1, "position": 1}, seed=0)
    assert Counter(categories) == {"colors": 334, "counting": 333, "position": 333}
    assert categories != sorted(categories)  # shuffled


def test_cli_suites_export(tmp_path):
    path = tmp_path / "suite.jsonl"
    result = run_cli("data", "suites", "--export", str(path))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 192 and records[0]["suite"] == "geneval-shapes"
    assert records[0]["version"] == 2 and records[0]["prompt"] == records[0]["canonical"]
    listing = run_cli("data", "suites")
    for line in ("geneval-shapes v2", "geneval-shapes-para v1", "validation-shapes v1",
                 "validation-shapes-para v1", "geneval-shapes-v1 v1"):
        assert line + ":" in listing.stdout, listing.stdout
    assert "heldout-v1 prompts, image seeds from 8000000" in listing.stdout
    para = tmp_path / "para.jsonl"
    result = run_cli("data", "suites", "--name", "geneval-shapes-para", "--export", str(para))
    assert result.returncode == 0, result.stderr
    records = [json.loads(line) for line in para.read_text().splitlines()]
    assert len(records) == 192 and all(r["prompt"] != r["canonical"] for r in records)


def _png_bytes(folder, fmt: str) -> list[bytes]:
    if fmt == "imagefolder":
        return [p.read_bytes() for p in sorted(folder.glob("*.png"))]
    from pictor.data.shards import read_shards

    return read_shards(folder, ["image"]).column("image").to_pylist()


def _truth(folder, fmt: str) -> list[dict]:
    """(text, category, seed, canonical, captions) of each record, in either format."""
    if fmt == "imagefolder":
        return read_metadata(folder)
    from pictor.data.shards import read_shards

    table = read_shards(folder, ["caption", "extra"]).to_pylist()
    return [{"text": r["caption"], **json.loads(r["extra"])} for r in table]


@pytest.mark.parametrize("fmt", ["imagefolder", "shards"])
def test_images_do_not_depend_on_the_caption_mode(tmp_path, fmt):
    """Captions come from each example's own caption stream: same seeds, same PNG bytes and
    scenes whatever the mode; every record's caption is rebuilt from its seed and label."""
    runs = {mode: tmp_path / mode for mode in ("canonical", "paraphrase", "mix")}
    for mode, folder in runs.items():
        config = synthesize(folder, 60, seed=7, workers=1, progress=False, format=fmt,
                            captions=mode, canonical_share=0.5)
        assert config.captions == mode
        saved = json.loads((folder / "synth_config.json").read_text())
        assert saved["captions"] == mode
        assert saved["canonical_share"] == (0.5 if mode == "mix" else None)
        assert saved["caption_language_version"] == (None if mode == "canonical" else 1)
    pngs = {mode: _png_bytes(folder, fmt) for mode, folder in runs.items()}
    assert len(pngs["canonical"]) == 60
    assert pngs["paraphrase"] == pngs["canonical"] == pngs["mix"]
    truth = {mode: _truth(folder, fmt) for mode, folder in runs.items()}
    keys = ("category", "seed", "canonical")
    assert ([[r[k] for k in keys] for r in truth["paraphrase"]]
            == [[r[k] for k in keys] for r in truth["canonical"]]
            == [[r[k] for k in keys] for r in truth["mix"]])
    for mode, records in truth.items():
        labels = Counter(r["captions"] for r in records)
        if mode == "canonical":
            assert labels == {CANONICAL_LABEL: 60}
        elif mode == "paraphrase":
            assert labels[PARAPHRASE_LABEL] >= 55  # a paraphrase may happen to be canonical
        else:
            assert 15 <= labels[CANONICAL_LABEL] <= 45 and labels[PARAPHRASE_LABEL] >= 15
        for r in records:
            canonical, _ = sample_prompt_and_scene(r["category"], example_rng("train", r["seed"]))
            assert r["canonical"] == canonical
            assert (r["text"] == canonical) == (r["captions"] == CANONICAL_LABEL)
            assert example_caption(canonical, mode, r["seed"], canonical_share=0.5).text \
                == r["text"]
            if r["captions"] == PARAPHRASE_LABEL:  # from the record alone
                again = paraphrase(parse_prompt(canonical), caption_rng("train", r["seed"]),
                                   "train")
                assert again.text == r["text"]


def test_cli_synth_captions_flags(tmp_path):
    out = tmp_path / "para"
    result = run_cli("data", "synth", "--num-images", "12", "--out", str(out), "--quiet",
                     "--workers", "1", "--canonical-share", "0")  # mix is the default
    assert result.returncode == 0, result.stderr
    assert "mix captions" in result.stdout
    records = read_metadata(out)
    assert sum(r["text"] != r["canonical"] for r in records) >= 10
    config = json.loads((out / "synth_config.json").read_text())
    assert config["captions"] == "mix" and config["canonical_share"] == 0.0
    bad = run_cli("data", "synth", "--num-images", "3", "--out", str(tmp_path / "x"),
                  "--captions", "canonical", "--canonical-share", "0.5")
    assert bad.returncode == 2 and "--captions mix" in bad.stderr
    bad = run_cli("data", "synth", "--num-images", "3", "--out", str(tmp_path / "y"),
                  "--captions", "mix", "--canonical-share", "2")
    assert bad.returncode == 2 and "canonical_share" in bad.stderr
