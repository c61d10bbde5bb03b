"""Serving security rules: loopback detection, refusing to start beyond loopback without a token,
token files, constant-time token checks and header parsing, the visible mark."""

from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from PIL import Image

from pictor.cli import serve as serve_cli
from pictor.serving.mark import add_visible_mark
from pictor.serving.security import bearer_token, tokens_match
from pictor.serving.settings import ServeSettings, is_loopback_host, read_token_file

TOKEN = "0123456789abcdef0123"


@pytest.mark.parametrize("host, loopback", [
    ("127.0.0.1", True), ("127.8.9.10", True), ("localhost", True), ("::1", True),
    ("[::1]", True), ("0.0.0.0", False), ("::", False), ("192.168.1.5", False),
    ("example.org", False), ("", False),
])
def test_is_loopback_host(host, loopback):
    assert is_loopback_host(host) is loopback


def test_refuses_non_loopback_without_token():
    with pytest.raises(ValueError, match="refusing to serve on '0.0.0.0' without a bearer token"):
        ServeSettings(host="0.0.0.0").check()
    ServeSettings(host="0.0.0.0", token=TOKEN).check()
    ServeSettings(host="127.0.0.1").check()
    with pytest.raises(ValueError, match="at least 16"):
        ServeSettings(token="short").check()
    with pytest.raises(ValueError, match="max_num_images"):
        ServeSettings(max_num_images=0).check()


def test_cli_refuses_before_loading_the_model(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    serve_cli.register(parser.add_subparsers())
    args = parser.parse_args(["serve", "--host", "0.0.0.0", "--model",
                              str(tmp_path / "no-model")])
    assert args.func(args) == 2
    assert "without a bearer token" in capsys.readouterr().err
    short = tmp_path / "token"
    short.write_text("abc\n")
    args = parser.parse_args(["serve", "--token-file", str(short)])
    assert args.func(args) == 2
    assert "at least 16 characters" in capsys.readouterr().err


def test_read_token_file(tmp_path):
    path = tmp_path / "token"
    path.write_text(f"  {TOKEN}\n")
    os.chmod(path, 0o600)
    assert read_token_file(path) == TOKEN
    with pytest.raises(ValueError, match="does not exist"):
        read_token_file(tmp_path / "missing")
    path.write_text("two words but long enough")
    with pytest.raises(ValueError, match="one word"):
        read_token_file(path)
    path.write_text(TOKEN)
    os.chmod(path, 0o644)
    with pytest.warns(UserWarning, match="readable by other users"):
        read_token_file(path)


def test_token_helpers():
    assert tokens_match(TOKEN, TOKEN)
    assert not tokens_match(TOKEN[:-1], TOKEN) and not tokens_match(None, TOKEN)
    assert not tokens_match("", TOKEN)
    assert bearer_token(f"Bearer {TOKEN}") == TOKEN == bearer_token(f"bearer  {TOKEN} ")
    assert bearer_token(TOKEN) is None and bearer_token("Basic abc") is None
    assert bearer_token("Bearer ") is None and bearer_token(None) is None


@pytest.mark.parametrize("size", [16, 64, 512])
def test_visible_mark_stays_in_the_bottom_right(size):
    image = Image.new("RGB", (size, size), (32, 32, 32))
    marked = np.asarray(add_visible_mark(image))
    changed = np.argwhere((marked != np.asarray(image)).any(axis=-1))
    assert len(changed) > 0
    assert changed[:, 0].min() >= size // 2  # a band at the bottom ...
    assert changed[:, 1].max() == size - 1 and changed[:, 0].max() == size - 1  # ... right
    assert add_visible_mark(image).size == image.size
