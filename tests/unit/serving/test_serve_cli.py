"""`pictor serve`'s inputs that containers set: the token from $PICTOR_TOKEN and --device, each
checked before the server starts (exit 2 with the reason)."""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from pictor.cli import serve as serve_cli
from pictor.serving.settings import TOKEN_ENV, read_token_env

TOKEN = "test-token-0123456789abcdef"


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", *argv])
    return args.func(args)


def test_token_from_the_environment(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv(TOKEN_ENV, raising=False)
    assert read_token_env() is None
    missing_model = ["--host", "0.0.0.0", "--model", str(tmp_path / "no-model")]
    assert run(missing_model) == 2
    assert "without a bearer token" in capsys.readouterr().err
    monkeypatch.setenv(TOKEN_ENV, f"  {TOKEN}\n")
    assert read_token_env() == TOKEN
    assert run(missing_model) == 2  # the token passed; the model folder is what fails now
    assert "does not exist" in capsys.readouterr().err
    for bad in ("short", "two words but long enough"):
        monkeypatch.setenv(TOKEN_ENV, bad)
        assert run(missing_model) == 2
        assert f"${TOKEN_ENV} must be one word" in capsys.readouterr().err
    # --token-file wins over the environment
    token_file = tmp_path / "token"
    token_file.write_text("x")
    assert run(["--token-file", str(token_file), *missing_model]) == 2
    assert "token in" in capsys.readouterr().err


def test_device_is_checked_before_serving(tmp_path, capsys):
    missing_model = ["--model", str(tmp_path / "no-model")]
    assert run(["--device", "tpu-please", *missing_model]) == 2
    assert "is not a torch device" in capsys.readouterr().err
    assert run(["--device", "meta", *missing_model]) == 2
    assert "serves on cpu or cuda" in capsys.readouterr().err
    assert run(["--device", "cpu", *missing_model]) == 2  # accepted: the model is what fails
    assert "does not exist" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert run(["--device", "cuda", *missing_model]) == 2
        assert "no CUDA device is visible" in capsys.readouterr().err


def test_two_model_folders_of_one_name_are_refused(tmp_path, capsys):
    """Each served model is chosen by its folder's name: two folders of one name (here the
    shipped model and a link to it elsewhere) exit 2 before anything loads or listens."""
    shipped = Path(__file__).resolve().parents[3] / "models" / "shapes-v11"
    (tmp_path / "copy").mkdir()
    link = tmp_path / "copy" / "shapes-v11"
    link.symlink_to(shipped, target_is_directory=True)
    assert run(["--model", str(shipped), "--model", str(link)]) == 2
    assert "two models would be served as 'shapes-v11'" in capsys.readouterr().err
    assert run(["--model", str(shipped), "--model", str(tmp_path / "no-model")]) == 2
    assert "does not exist" in capsys.readouterr().err
