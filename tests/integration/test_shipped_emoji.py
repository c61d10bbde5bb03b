"""The shipped emoji model and its judge, as `make demo` runs them: each demo caption (three of
them held out of training) is drawn in the style it asks for, as the shipped judge reads it
(8 of 8 when committed), and every PNG says which model made it. A change to sampling, layers
or loading that breaks emoji-v1 fails here."""

from __future__ import annotations

from pathlib import Path

import pytest

from pictor.cli.demo import EMOJI_IMAGES_PER_PROMPT, EMOJI_PROMPTS, emoji_demo
from pictor.provenance import read_provenance

ROOT = Path(__file__).resolve().parents[2]


def test_the_shipped_emoji_model_draws_the_asked_style(tmp_path, capsys):
    verdicts = emoji_demo(ROOT / "models" / "emoji-v1", ROOT / "models" / "emoji-clip",
                          tmp_path, steps=20)
    assert verdicts is not None, capsys.readouterr().out
    assert len(verdicts) == len(EMOJI_PROMPTS) * EMOJI_IMAGES_PER_PROMPT
    wrong = [(path.name, asked, judged) for path, asked, judged in verdicts if asked != judged]
    assert not wrong
    for path, _, _ in verdicts:
        record = read_provenance(path)
        assert record.model_name == "emoji-v1" and record.synthetic
    assert "8/8 emoji images" in capsys.readouterr().out


@pytest.mark.parametrize("missing", ["model", "judge"])
def test_the_emoji_part_names_what_is_missing(tmp_path, capsys, missing):
    model = tmp_path / "nope" if missing == "model" else ROOT / "models" / "emoji-v1"
    judge = tmp_path / "nope" if missing == "judge" else ROOT / "models" / "emoji-clip"
    assert emoji_demo(model, judge, tmp_path / "out", 20) is None
    out = capsys.readouterr().out
    assert "emoji part skipped" in out and str(tmp_path / "nope") in out
    assert not (tmp_path / "out").exists()
