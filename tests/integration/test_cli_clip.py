"""`pictor train-clip` and `pictor eval-clip` end to end on tiny shapes-world data: training
learns the captions (R-precision far above chance, measured on the saved weights), eval-clip
gives a copy of the real images exactly the real images' figures and flags them as
memorised, blank images score below the ceiling, and bad input exits 2 with the reason."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pictor.cli.main import main
from pictor.config import load_config
from pictor.evaluation.clip_eval import GRID_LABEL_HEIGHT, load_clip
from pictor.evaluation.clip_metrics import distinct, r_precision
from pictor.evaluation.clip_training import ClipTrainConfig, load_images_uint8
from pictor.networks.clip import ClipModel
from pictor.provenance import ProvenanceRecord, save_png

TINY = ["--training.max_steps=30", "--training.batch_size=64", "--model.channels=[16,32,64]",
        "--training.num_threads=1", "--training.log_every_steps=10", "--quiet"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """(training imagefolder, held-out imagefolder, CLIP folder, cache folder)."""
    from pictor.data.loader import open_dataset
    from pictor.data.synth import synthesize

    base = tmp_path_factory.mktemp("clip")
    train, heldout, cache = base / "train", base / "heldout", base / "cache"
    synthesize(train, 128, seed=0, workers=1, progress=False)
    synthesize(heldout, 48, seed=1, workers=1, progress=False)
    assert len(open_dataset(train)) == 128
    # `pictor ...` in a subprocess costs a torch import per command: main() runs the same code
    assert main(["train-clip", "--data", str(train), "-o", str(base / "clip"),
                 f"--data.cache_dir={cache}", *TINY]) == 0
    return train, heldout, base / "clip", cache


def test_train_clip_learns_the_captions_of_its_data(trained):
    from pictor.data.loader import open_dataset

    train, _, clip_dir, _ = trained
    assert {p.name for p in clip_dir.iterdir()} >= {"clip.safetensors", "config.yaml",
                                                    "metrics.jsonl", "training_summary.json"}
    log = [json.loads(line) for line in (clip_dir / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in log] == [10, 20, 30]
    assert log[-1]["loss_ema"] < log[0]["loss_ema"]
    # R-precision measured here, on the saved file, against an untrained network of the same
    # config: the captions' colours and shapes are learned, not given
    judge = load_clip(clip_dir)
    dataset = open_dataset(train, 64)
    unique, index = distinct(dataset.captions)
    images = load_images_uint8(dataset)
    learned = r_precision(judge.embed_images(images), index, judge.embed_texts(unique))
    torch.manual_seed(0)
    judge.model = ClipModel(judge.config).eval()
    untrained = r_precision(judge.embed_images(images), index, judge.embed_texts(unique))
    assert learned.chance < 0.02
    assert learned.value > 0.3 > 0.05 > untrained.value
    summary = json.loads((clip_dir / "training_summary.json").read_text())
    assert summary["steps"] == 30 and summary["fit_r_precision"]["value"] > 0.3
    # the run's resolved config reads back through the project's YAML loader
    saved = load_config(clip_dir / "config.yaml", ClipTrainConfig)
    assert saved.training.max_steps == 30 and saved.model == judge.config


def write_imagefolder(folder, images, captions):
    folder.mkdir(parents=True)
    rows = []
    for i, (image, caption) in enumerate(zip(images, captions, strict=True)):
        image.save(folder / f"{i:03d}.png")
        rows.append(json.dumps({"file_name": f"{i:03d}.png", "text": caption}))
    (folder / "metadata.jsonl").write_text("\n".join(rows) + "\n")


def test_eval_clip_gives_copies_the_ceiling_and_blanks_less(trained, tmp_path, capsys):
    _, heldout, clip_dir, _ = trained
    records = [json.loads(line) for line in (heldout / "metadata.jsonl").read_text().splitlines()]
    # the "generator" reproduces every held-out image, saved as `pictor generate` saves
    # (no metadata.jsonl: each PNG's provenance record holds its prompt)
    copies = tmp_path / "copies"
    copies.mkdir()
    for i, r in enumerate(records):
        record = ProvenanceRecord(prompt=r["text"], seed=i, sampler="dpm++2m", num_steps=20,
                                  guidance_scale=4.0, model_name="copy", model_sha256="0" * 64)
        save_png(Image.open(heldout / r["file_name"]), copies / f"{i:03d}.png", record)
    blanks = tmp_path / "blanks"
    write_imagefolder(blanks, [Image.new("RGB", (64, 64), (128, 128, 128))] * len(records),
                      [r["text"] for r in records])
    assert main(["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--generated",
                 str(copies), "--train", str(heldout), "--group-by", "category", "-o",
                 str(tmp_path / "report"), "--threads", "1"]) == 0
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert "| R-precision (chance) |" in (tmp_path / "report" / "report.md").read_text()
    overall = report["groups"]["all"]
    assert set(report["groups"]) == {"all"} | {r["category"] for r in records}
    for key in ("clip_score", "r_precision"):
        assert overall["generated"][key] == overall["real"][key]
    # --train is the held-out set itself here: every image is its own nearest training image
    assert overall["real"]["memorisation"]["near_copy_share"] == 1.0
    assert overall["generated"]["memorisation"]["near_copy_share"] == 1.0
    assert overall["real"]["hard_negative_all"] is None  # shapes records have no emoji fields

    assert main(["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--generated",
                 str(blanks), "-o", str(tmp_path / "blank-report"), "--grid", "2"]) == 0
    assert "| CLIPScore |" in capsys.readouterr().out
    # the grid: per group (split: all of them "all" here) 2 captions, each real image at 2x
    # beside its generated (blank) image, pixel for pixel
    cells = json.loads((tmp_path / "blank-report" / "grid.json").read_text())
    grid = np.asarray(Image.open(tmp_path / "blank-report" / "grid.png").convert("RGB"))
    assert len(cells) == 2 and len({c["caption"] for c in cells}) == 2
    cell_w, cell_h = 2 * 128 + 4 + 8, 128 + GRID_LABEL_HEIGHT + 8
    by_caption = {r["text"]: r for r in records}
    for cell in cells:
        x, y = cell["column"] * cell_w, 8 + cell["row"] * cell_h
        real = np.asarray(Image.open(heldout / by_caption[cell["caption"]]["file_name"])
                          .convert("RGB"))
        assert np.array_equal(grid[y:y + 128, x:x + 128], real.repeat(2, 0).repeat(2, 1))
        assert (grid[y:y + 128, x + 132:x + 260] == 128).all()
    blank = json.loads((tmp_path / "blank-report" / "report.json").read_text())["groups"]["all"]
    assert blank["generated"]["r_precision"]["value"] < blank["real"]["r_precision"]["value"]
    dist = blank["distribution"]
    assert dist["generated_vs_real"]["fd"] > 2 * dist["real_vs_real"]["fd"]
    assert "memorisation" not in blank["generated"]  # no --train, no memorisation figure


def test_bad_input_exits_2_with_the_reason(trained, tmp_path, capsys):
    _, heldout, clip_dir, _ = trained
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    nothing, plain = tmp_path / "nothing", tmp_path / "plain"
    nothing.mkdir()
    plain.mkdir()
    Image.new("RGB", (64, 64)).save(plain / "000.png")  # a PNG without a provenance record
    single = tmp_path / "single"
    write_imagefolder(single, [Image.new("RGB", (64, 64))], ["a red circle"])
    elsewhere = tmp_path / "elsewhere"
    write_imagefolder(elsewhere, [Image.new("RGB", (64, 64))] * 2, ["a red circle", "no such"])
    out = str(tmp_path / "out")
    cases = [
        (["train-clip", "--data", str(tmp_path / "missing"), "-o", out], "is not a folder"),
        (["train-clip", "--data", str(empty), "-o", out], "holds no records"),
        (["train-clip", "--data", str(tmp_path), "-o", out], "is not a data set"),
        (["train-clip", "--data", str(single), "-o", out], "at least 2"),
        (["train-clip", "--data", str(heldout), "-o", out, "--training.batch_size=1"],
         "negatives"),
        (["eval-clip", "--clip", str(tmp_path), "--data", str(heldout)], "no CLIP"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(tmp_path / "missing")],
         "is not a folder"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--generated",
          str(elsewhere)], "not captions of the real set"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--generated",
          str(tmp_path / "missing")], "is not a folder"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--generated",
          str(nothing)], "nor PNGs of `pictor generate`"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--generated",
          str(plain)], "no pictor provenance record"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--grid", "2"],
         "--grid needs --generated and --output-dir"),
        (["eval-clip", "--clip", str(clip_dir), "--data", str(heldout), "--grid", "-1"],
         "captions per group >= 0"),
    ]
    for argv, message in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err, (argv, err)
    assert not (tmp_path / "out" / "clip.safetensors").exists()


def test_emoji_shards_give_style_and_tone_hard_negatives_per_split(tmp_path, capsys,
                                                                   monkeypatch):
    """The real route: emoji tarballs in the packages' own formats -> import -> prepare (shards)
    -> train-clip -> eval-clip. Every held-out image gets its two other styles as negatives,
    and every held-out (emoji, tone) pair the other tones of its emoji, which only the training
    set holds."""
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "unit" / "data"))
    from emoji_tarballs import make_packages

    tarballs = make_packages(tmp_path / "npm")
    data, train, heldout = tmp_path / "emoji", tmp_path / "train64", tmp_path / "heldout64"
    assert main(["data", "import", "emoji", *map(str, tarballs), "-o", str(data)]) == 0
    for split, out in (("train", train), ("heldout", heldout)):
        assert main(["data", "prepare", str(data / split), "-o", str(out), "--workers", "1"]) == 0
    assert main(["train-clip", "--data", str(train), "-o", str(tmp_path / "clip"),
                 f"--data.cache_dir={tmp_path / 'cache'}", *TINY]) == 0
    assert main(["eval-clip", "--clip", str(tmp_path / "clip"), "--data", str(heldout),
                 "--train", str(train), "-o", str(tmp_path / "report")]) == 0
    capsys.readouterr()
    records = [json.loads(line) for line in
               (data / "heldout" / "metadata.jsonl").read_text().splitlines()]
    report = json.loads((tmp_path / "report" / "report.json").read_text())
    assert set(report["groups"]) == {"all"} | {r["split"] for r in records}
    real = report["groups"]["all"]["real"]
    assert real["num_images"] == len(records)
    assert real["hard_negative_style"]["num_images"] == len(records)
    assert real["hard_negative_style"]["chance"] == pytest.approx(1 / 3)
    composition = [r for r in records if r["split"] == "heldout_composition"]
    assert composition  # the small packages hold such a pair
    tone = report["groups"]["heldout_composition"]["real"]["hard_negative_tone"]
    assert tone["num_images"] == len(composition) and tone["chance"] < 1 / 2


def test_export_model_stores_a_judge_in_float16(trained, tmp_path, capsys):
    from safetensors import safe_open

    from pictor.data.loader import open_dataset

    _, heldout, clip_dir, _ = trained
    out = tmp_path / "judge"
    assert main(["export-model", str(clip_dir), str(out), "--dtype", "float16"]) == 0
    assert {"clip.safetensors", "config.yaml", "training_summary.json", "metrics.jsonl"} <= {
        p.name for p in out.iterdir()}
    size, size32 = ((d / "clip.safetensors").stat().st_size for d in (out, clip_dir))
    assert size < 0.55 * size32
    with safe_open(str(out / "clip.safetensors"), framework="pt") as f:
        meta32 = safe_open(str(clip_dir / "clip.safetensors"), framework="pt").metadata()
        assert f.metadata()["train_config"] == meta32["train_config"]
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.float16}
    # the float16 judge embeds as the float32 one does, to float16's rounding
    images = load_images_uint8(open_dataset(heldout, 64))[:16]
    emb16, emb32 = load_clip(out).embed_images(images), load_clip(clip_dir).embed_images(images)
    assert (emb16 * emb32).sum(1).min() > 0.999
    assert main(["export-model", str(clip_dir), str(tmp_path / "x"), "--checkpoint", "1"]) == 2
    assert "no checkpoints" in capsys.readouterr().err
