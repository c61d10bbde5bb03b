"""A NaN/inf loss stops the run with a clear message; the last good checkpoint stays intact."""

from __future__ import annotations

import json
import re

import pytest
from train_support import MICRO_MODEL, TINY_YAML, shared_data, tiny_config, tiny_overrides

from pictor.training.checkpoints import find_latest, list_checkpoints
from pictor.training.loop import NonFiniteLossError
from pictor.training.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in folder.iterdir()}


def test_nan_loss_stops_and_keeps_last_good_checkpoint(data, tmp_path, capsys):
    run = tmp_path / "run"
    common = [*MICRO_MODEL, "--training.checkpoint_every_steps=10", "--optimizer.warmup_steps=0"]
    train(tiny_config(*data, run, *common, "--training.max_steps=10"))
    good = find_latest(run / "checkpoints")
    before = _snapshot(good)

    # An absurd learning rate makes the weights overflow: the loss turns inf/NaN within steps.
    diverging = tiny_config(*data, run, *common, "--training.max_steps=30",
                            "--optimizer.lr=1e30", "--training.grad_clip_norm=null")
    with pytest.raises(NonFiniteLossError) as info:
        train(diverging, resume="latest")
    message = str(info.value)
    assert re.search(r"became (nan|inf|-inf) at step 1[1-9]", message), message
    assert str(good) in message and "Lower optimizer.lr" in message
    assert [s for s, _ in list_checkpoints(run / "checkpoints")] == [10]
    assert _snapshot(good) == before  # untouched, byte for byte
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]
    last = json.loads((run / "metrics.jsonl").read_text().splitlines()[-1])
    assert set(last) & {"loss", "gradient_norm"}

    # the same through the CLI: exit code 1 and the message on stderr
    from pictor.cli.main import main

    code = main(["train", "--config", str(TINY_YAML), *tiny_overrides(*data, run), *common,
                 "--training.max_steps=30", "--optimizer.lr=1e30",
                 "--training.grad_clip_norm=null", "--resume", "latest"])
    assert code == 1
    assert "training stopped without writing a checkpoint" in capsys.readouterr().err
    assert _snapshot(good) == before
