"""`pictor eval` end to end on tiny models: a 10-step trained one (shared with the pipeline
tests) and a randomly initialised one to compare with, a sweep, and every report file."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import pytest
from pipeline_support import tiny_model_dir
from train_support import MICRO_MODEL, TINY_YAML

from pictor.cli import eval as eval_command
from pictor.config import TrainConfig, load_config, save_config
from pictor.data.suites import get_suite
from pictor.networks.io import save_module
from pictor.networks.unet import UNet

SUITE = "validation-shapes"


def run_cli(argv: list[str]) -> int:
    """The command as `pictor` dispatches it (register + func), without needing cli/main.py."""
    parser = argparse.ArgumentParser(prog="pictor")
    eval_command.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return args.func(args)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model_dir(tmp_path_factory)


@pytest.fixture(scope="module")
def random_model_dir(tmp_path_factory) -> Path:
    """A model folder with a randomly initialised micro U-Net (config of configs/tiny.yaml)."""
    import torch

    out = tmp_path_factory.mktemp("random_model")
    config = load_config(TINY_YAML, TrainConfig, MICRO_MODEL)
    torch.manual_seed(0)
    save_module(UNet(config.model), config.model, out / "unet.safetensors")
    save_config(config, out / "config.yaml")
    return out


def test_eval_writes_every_report_file(model_dir, random_model_dir, tmp_path, capsys):
    out = tmp_path / "report"
    code = run_cli(["eval", "--model", str(model_dir), "--suite", SUITE,
                    "--images-per-prompt", "2", "--steps", "2", "--sweep", "steps=1,2",
                    "--sweep", "sampler=ddim", "--compare", str(random_model_dir),
                    "--threads", "1", "--quiet", "-o", str(out)])
    assert code == 0
    printed = capsys.readouterr().out
    assert "overall" in printed and str(out / "report.html") in printed
    data = json.loads((out / "report.json").read_text())
    n_images = 2 * len(get_suite(SUITE))
    assert [len(m["images"]) for m in data["models"]] == [n_images, n_images]
    settings = data["models"][0]["settings"]
    assert settings == {"num_steps": 2, "sampler": "dpm++2m", "guidance_scale": 4.0,
                        "guidance_interval": [1.0, None],
                        "compute_dtype": settings["compute_dtype"], "layout": False}
    assert settings["compute_dtype"] in ("float32", "bfloat16")
    main = data["models"][0]
    # the scores are the pass rates of the listed images (not merely numbers in [0, 1])
    outcomes: dict[str, list[bool]] = {}
    for image in main["images"]:
        outcomes.setdefault(image["category"], []).append(image["passed"])
    rates = {c: sum(v) / len(v) for c, v in outcomes.items()}
    assert len(rates) == 6
    assert {c: main["scores"][c] for c in rates} == pytest.approx(rates)
    assert main["scores"]["overall"] == pytest.approx(sum(rates.values()) / 6)
    assert len(main["intervals_95"]) == 7
    assert main["distribution"]["num_images"] == n_images and main["diversity"] is not None
    assert data["floors"]["16"]["num_images"] == n_images
    assert [p["value"] for p in data["sweeps"]["steps"]] == [1, 2]
    assert [p["value"] for p in data["sweeps"]["sampler"]] == ["ddim"]
    for name in ("score_vs_steps.png", "score_vs_sampler.png"):
        assert (out / "plots" / name).is_file()
    assert len(list((out / "grids").glob("*/*.png"))) == 12  # 6 categories x 2 models
    markdown = (out / "report.md").read_text()
    assert "## Comparison" in markdown and "## Sweep: steps" in markdown
    page = (out / "report.html").read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    # 12 grids, 2 sweep plots and the comparison plot
    assert len(sources) == 15 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_eval_user_errors_exit_2(model_dir, tmp_path, capsys):
    assert run_cli(["eval", "--model", str(model_dir), "--sweep", "seed=1",
                    "-o", str(tmp_path)]) == 2
    assert "KEY=" in capsys.readouterr().err
    assert run_cli(["eval", "--model", str(tmp_path / "none"), "-o", str(tmp_path)]) == 2
    assert run_cli(["eval", "--model", str(model_dir), "--sampler", "plms",
                    "-o", str(tmp_path)]) == 2
    assert "unknown sampler" in capsys.readouterr().err
