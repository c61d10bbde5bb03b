"""`pictor generate / inspect / reproduce / explain` end to end on a tiny trained model: files,
provenance round trip, exact reproduction (also across processes), exit codes of user errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pipeline_support import tiny_model_dir

from pictor.cli.main import main
from pictor.hardware import device_name
from pictor.provenance import DIGITAL_SOURCE_TYPE, read_provenance, save_png

PROMPT = "a red circle"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


def generate(model_dir: Path, out: Path, capsys, *extra: str) -> list[Path]:
    code = main(["generate", PROMPT, "--model", str(model_dir), "-o", str(out), "--steps", "6",
                 *extra])
    assert code == 0
    return [Path(line) for line in capsys.readouterr().out.split()]


def test_generate_writes_new_files_with_records(model_dir, tmp_path, capsys):
    first = generate(model_dir, tmp_path, capsys, "-n", "2", "--seed", "7")
    second = generate(model_dir, tmp_path, capsys, "-n", "2", "--seed", "7")
    assert len(first) == 2 and all(p.is_file() for p in first + second)
    assert not set(first) & set(second), "a second run overwrote the first"
    assert np.array_equal(np.asarray(Image.open(first[1])), np.asarray(Image.open(second[1])))
    record = read_provenance(first[1])
    assert (record.prompt, record.seed, record.num_steps, record.sampler) == (
        PROMPT, 8, 6, "dpm++2m")

    assert main(["inspect", str(first[0])]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["seed"] == 7 and shown["xmp_digital_source_type"] == DIGITAL_SOURCE_TYPE


def test_prompts_from_a_file_or_a_data_set_matches_one_prompt_at_a_time(model_dir, tmp_path,
                                                                         capsys):
    prompts = ["a red circle", "two stars", "a blue square above a green triangle"]
    text = tmp_path / "prompts.txt"
    text.write_text("\n".join([prompts[0], "", prompts[1], "  ", prompts[2], ""]),
                    encoding="utf-8")
    folder = tmp_path / "set"
    folder.mkdir()
    # an imagefolder whose captions repeat: each distinct caption is generated once
    rows = [{"file_name": f"{i}.png", "text": prompts[i % 3]} for i in range(5)]
    (folder / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for i in range(5):
        Image.new("RGB", (64, 64), "white").save(folder / f"{i}.png")

    for source, out in ((text, tmp_path / "from-file"), (folder, tmp_path / "from-set")):
        assert main(["generate", "--prompts-from", str(source), "--model", str(model_dir),
                     "-o", str(out), "--steps", "6", "-n", "2", "--seed", "3"]) == 0
        assert "wrote 6 images of 3 prompts" in capsys.readouterr().out
        made = sorted(out.glob("*.png"))
        by_prompt = {}
        for path in made:
            record = read_provenance(path)
            by_prompt.setdefault(record.prompt, []).append((record.seed, path))
        assert sorted(by_prompt) == sorted(prompts)
        assert all(sorted(s for s, _ in v) == [3, 4] for v in by_prompt.values())
        single = generate(model_dir, tmp_path / f"single-{out.name}", capsys, "-n", "2",
                          "--seed", "3")
        first = dict(by_prompt[PROMPT])
        assert np.array_equal(np.asarray(Image.open(first[3])), np.asarray(Image.open(single[0])))


def test_prompts_from_errors_exit_2(model_dir, tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe\x00bad")
    cases = [(["generate", "--model", str(model_dir)], "one of the two"),
             (["generate", "a red circle", "--prompts-from", str(empty)], "one of the two"),
             (["generate", "--prompts-from", str(empty)], "holds no prompt"),
             (["generate", "--prompts-from", str(binary)], "cannot read it"),
             (["generate", "--prompts-from", str(tmp_path / "nothing.txt")], "cannot read it"),
             (["generate", "--prompts-from", str(tmp_path)], "is not a data set")]
    for argv, reason in cases:
        assert main([*argv, "-o", str(tmp_path / "out")]) == 2, argv
        assert reason in capsys.readouterr().err, argv
    assert not (tmp_path / "out").exists()


def test_reproduce_matches_and_detects_changes(model_dir, tmp_path, capsys):
    [path] = generate(model_dir, tmp_path, capsys, "-n", "1", "--seed", "3",
                      "--negative", "a blue square", "--guidance", "2.5")
    assert main(["reproduce", str(path), "--model", str(model_dir)]) == 0
    assert "match" in capsys.readouterr().out
    image = Image.open(path)
    arr = np.asarray(image.convert("RGB")).copy()
    arr[0, 0] = 255 - arr[0, 0]
    tampered = save_png(Image.fromarray(arr), tmp_path / "tampered.png", read_provenance(image))
    assert main(["reproduce", str(tampered), "--model", str(model_dir)]) == 1
    out = capsys.readouterr().out
    assert "mismatch" in out and "note:" not in out  # made on this processor: no note


def test_reproduce_names_both_processors_when_the_image_was_made_on_another(
        model_dir, tmp_path, capsys):
    [path] = generate(model_dir, tmp_path, capsys, "-n", "1", "--seed", "4")
    image = Image.open(path)
    record = read_provenance(image)
    here = record.extra["device"]
    assert here == device_name(torch.device("cpu")) and here.startswith("cpu: ")
    record.extra["device"] = "cpu: Some Other Processor"
    same_pixels = save_png(image.convert("RGB"), tmp_path / "elsewhere.png", record)
    assert main(["reproduce", str(same_pixels), "--model", str(model_dir)]) == 0  # pixels decide
    assert "note:" not in capsys.readouterr().out
    arr = np.asarray(image.convert("RGB")).copy()
    arr[1, 1] = 255 - arr[1, 1]
    differs = save_png(Image.fromarray(arr), tmp_path / "elsewhere-differs.png", record)
    assert main(["reproduce", str(differs), "--model", str(model_dir)]) == 1
    out = capsys.readouterr().out
    assert "mismatch" in out
    assert f"made on cpu: Some Other Processor, this is {here}" in out


def test_reproduce_follows_the_recorded_guidance_interval_and_dtype(model_dir, tmp_path, capsys):
    [every] = generate(model_dir, tmp_path, capsys, "-n", "1", "--guidance-interval", "all")
    [wide] = generate(model_dir, tmp_path, capsys, "-n", "1", "--guidance-interval", "0.5,80")
    assert read_provenance(every).extra["guidance_interval"] is None
    assert read_provenance(wide).extra["guidance_interval"] == [0.5, 80.0]
    for path in (every, wide):
        assert main(["reproduce", str(path), "--model", str(model_dir)]) == 0, path
        assert "match" in capsys.readouterr().out
    # a record from before the interval existed has no key: it was guided at every step
    record = read_provenance(every)
    record.extra.pop("guidance_interval")
    old = save_png(Image.open(every).convert("RGB"), tmp_path / "old.png", record)
    assert main(["reproduce", str(old), "--model", str(model_dir)]) == 0
    assert "match" in capsys.readouterr().out
    [bf16] = generate(model_dir, tmp_path, capsys, "-n", "1", "--dtype", "bfloat16")
    assert read_provenance(bf16).extra["compute_dtype"] == "bfloat16"
    assert main(["reproduce", str(bf16), "--model", str(model_dir)]) == 0
    assert "match" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", PROMPT, "--model", str(model_dir), "--guidance-interval", "3,1"])
    assert exit_info.value.code == 2
    assert "LO,HI" in capsys.readouterr().err


def test_reproduce_follows_the_recorded_layout_guidance(model_dir, tmp_path, capsys):
    relation = "a red circle above a blue square"
    paths = {}
    for layout in ("on", "off"):
        assert main(["generate", relation, "--model", str(model_dir), "-o", str(tmp_path),
                     "--steps", "6", "-n", "1", "--layout", layout]) == 0
        [paths[layout]] = [Path(line) for line in capsys.readouterr().out.split()]
        assert read_provenance(paths[layout]).extra["layout"] is (layout == "on")
        assert main(["reproduce", str(paths[layout]), "--model", str(model_dir)]) == 0
        assert "match" in capsys.readouterr().out
    on, off = (np.asarray(Image.open(paths[k])) for k in ("on", "off"))
    assert not np.array_equal(on, off)
    # a record from before layout guidance existed has no key: it was made without it
    record = read_provenance(paths["off"])
    record.extra.pop("layout")
    old = save_png(Image.open(paths["off"]).convert("RGB"), tmp_path / "old.png", record)
    assert main(["reproduce", str(old), "--model", str(model_dir)]) == 0
    assert "match" in capsys.readouterr().out


def test_reproduce_applies_the_recorded_layout_rules(model_dir, tmp_path, capsys):
    count = "three red circles"
    paths = {}
    for layout in ("on", "off"):
        assert main(["generate", count, "--model", str(model_dir), "-o", str(tmp_path / layout),
                     "--steps", "6", "-n", "1", "--layout", layout]) == 0
        [paths[layout]] = [Path(line) for line in capsys.readouterr().out.split()]
    assert read_provenance(paths["on"]).extra["layout_rules"] == ["relation", "count"]
    assert not np.array_equal(*(np.asarray(Image.open(paths[k])) for k in ("on", "off")))
    assert main(["reproduce", str(paths["on"]), "--model", str(model_dir)]) == 0
    assert "match" in capsys.readouterr().out
    # a record from before the count rule says layout on without rules: the relation rule
    # alone, which leaves a count prompt as it is without layout guidance
    record = read_provenance(paths["off"])
    record.extra["layout"] = True
    old = save_png(Image.open(paths["off"]).convert("RGB"), tmp_path / "old.png", record)
    assert main(["reproduce", str(old), "--model", str(model_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("match:")


def test_same_pixels_in_another_process(model_dir, tmp_path, capsys):
    [here] = generate(model_dir, tmp_path / "here", capsys, "-n", "1", "--seed", "4",
                      "--sampler", "euler")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "pictor.cli.main", "generate", PROMPT, "--model", str(model_dir),
         "-o", str(tmp_path / "there"), "--steps", "6", "-n", "1", "--seed", "4",
         "--sampler", "euler"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    there = Path(proc.stdout.split()[0])
    assert np.array_equal(np.asarray(Image.open(here)), np.asarray(Image.open(there)))


def test_empty_prompt_generates(model_dir, tmp_path, capsys):
    assert main(["generate", "", "-n", "1", "--steps", "3", "--model", str(model_dir),
                 "-o", str(tmp_path)]) == 0
    [path] = capsys.readouterr().out.split()
    assert read_provenance(path).prompt == ""


def test_user_errors_exit_2(model_dir, tmp_path, capsys, monkeypatch):
    assert main(["generate", PROMPT, "--sampler", "nope", "--model", str(model_dir)]) == 2
    err = capsys.readouterr().err
    assert "unknown sampler 'nope'" in err and "dpm++2m" in err and "euler" in err

    missing = tmp_path / "no-model"
    assert main(["generate", PROMPT, "--model", str(missing)]) == 2
    assert str(missing) in capsys.readouterr().err
    monkeypatch.setenv("PICTOR_MODEL", str(missing))
    assert main(["generate", PROMPT]) == 2
    assert str(missing) in capsys.readouterr().err

    plain = tmp_path / "plain.png"
    Image.new("RGB", (8, 8)).save(plain)
    assert main(["inspect", str(plain)]) == 2
    assert "no pictor provenance record" in capsys.readouterr().err


def test_hostile_prompts_and_records_exit_2_with_the_reason(model_dir, tmp_path, capsys):
    import time

    from PIL import PngImagePlugin

    from pictor.provenance import XMP_KEY, ProvenanceRecord

    assert main(["generate", "a red\x00circle", "--model", str(model_dir)]) == 2
    assert "prompt holds NUL (U+0000) at position 5" in capsys.readouterr().err
    assert main(["generate", PROMPT, "--negative", "\x1b[2J", "--model", str(model_dir)]) == 2
    assert "negative prompt holds a control character (U+001B)" in capsys.readouterr().err

    # a record holding a 30 MB prompt is refused at once (it took 83 s and 2.8 GB)
    record = ProvenanceRecord(prompt="a red circle " * 2_400_000, seed=0, sampler="ddim",
                              num_steps=2, guidance_scale=1.0, model_name="m",
                              model_sha256="0" * 64)
    huge = save_png(Image.new("RGB", (8, 8)), tmp_path / "huge.png", record)
    start = time.monotonic()
    assert main(["reproduce", str(huge), "--model", str(model_dir)]) == 2
    assert "the record's prompt has 31200000 characters" in capsys.readouterr().err
    assert time.monotonic() - start < 20

    # a malformed record or XMP packet: exit 2 with the reason, not a traceback
    small = ProvenanceRecord(prompt="a", seed=0, sampler="ddim", num_steps=2,
                             guidance_scale=1.0, model_name="m", model_sha256="0" * 64)
    for chunks, reason in [
        ({"pictor.provenance": "[1, 2]"}, "not a JSON object"),
        ({"pictor.provenance": '{"schema": "pictor.provenance/1"}'}, "lacks fields"),
        ({"pictor.provenance": small.to_json(), XMP_KEY: "<x:xmpmeta>\x01</x:xmpmeta>"},
         "not well-formed"),
    ]:
        info = PngImagePlugin.PngInfo()
        for key, text in chunks.items():
            info.add_itxt(key, text)
        bad = tmp_path / "bad.png"
        Image.new("RGB", (8, 8)).save(bad, pnginfo=info)
        assert main(["inspect", str(bad)]) == 2, reason
        assert reason in capsys.readouterr().err


def test_malformed_model_folders_exit_2_naming_the_file(model_dir, tmp_path, capsys):
    import shutil
    import time

    from pictor.networks.io import save_module
    from pictor.networks.unet import UNet, UNetConfig

    bomb = "a0: &a0 [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 10))
    unet = (model_dir / "unet.safetensors").read_bytes()
    other = UNetConfig(channels=(8, 24), blocks_per_level=(1, 1), attention_levels=(1,),
                       head_dim=8, time_embed_dim=16, context_dim=384)
    cases = [
        ("config.yaml", bomb, "alias bomb"),
        ("config.yaml", "model: [1, 2\n", "not a usable YAML config"),
        ("config.yaml", "model: {channels: many}\n", "model.channels"),
        ("config.yaml", "- a list\n", "expected a mapping"),
        ("unet.safetensors", unet[: len(unet) // 2], "SafetensorError"),
        ("unet.safetensors", b"\x00" * 8 + unet[8:], "SafetensorError"),
        ("unet.safetensors", None, "mixes files of two models"),  # another U-Net
    ]
    for name, content, problem in cases:
        folder = tmp_path / f"m{len(list(tmp_path.iterdir()))}"
        shutil.copytree(model_dir, folder)
        if content is None:
            save_module(UNet(other), other, folder / name)
        elif isinstance(content, str):
            (folder / name).write_text(content)
        else:
            (folder / name).write_bytes(content)
        start = time.monotonic()
        assert main(["generate", PROMPT, "--model", str(folder), "-o", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert str(folder / name) in err and problem in err, (name, problem, err)
        assert "Traceback" not in err and time.monotonic() - start < 30


def test_explain_writes_strips_and_gif(model_dir, tmp_path, capsys):
    [image] = generate(model_dir, tmp_path, capsys, "-n", "1")
    strip = tmp_path / "forward.png"
    assert main(["explain", "forward", str(image), "--model", str(model_dir),
                 "-o", str(strip)]) == 0
    assert Image.open(strip).width > Image.open(image).width * 4

    reverse, gif = tmp_path / "reverse.png", tmp_path / "reverse.gif"
    assert main(["explain", "reverse", PROMPT, "--steps", "5", "--model", str(model_dir),
                 "-o", str(reverse), "--gif", str(gif)]) == 0
    assert reverse.is_file()
    animation = Image.open(gif)
    assert animation.format == "GIF" and animation.n_frames == 5
