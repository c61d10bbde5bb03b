"""`pictor train --resume latest` with damaged checkpoints: a damaged newest one is skipped
with a warning and moved aside (never overwritten); when none verifies the command exits 2
naming each and why, and changes nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from train_support import MICRO_MODEL, TINY_YAML, shared_data, tiny_overrides

from pictor.cli.main import main
from pictor.training.checkpoints import list_checkpoints


def _flip_last_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))


def _snapshot(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file()}


@pytest.mark.timeout(600)
def test_resume_latest_with_damaged_checkpoints(tmp_path_factory, tmp_path, capsys):
    data, cache = shared_data(tmp_path_factory)
    run = tmp_path / "run"

    def train(max_steps: int, *extra: str) -> int:
        return main(["train", "--config", str(TINY_YAML),
                     *tiny_overrides(data, cache, run, *MICRO_MODEL,
                                     "--training.checkpoint_every_steps=2",
                                     f"--training.max_steps={max_steps}",
                                     "--training.progress_bar=false"), *extra])

    assert train(4) == 0
    ckpts = run / "checkpoints"
    assert [s for s, _ in list_checkpoints(ckpts)] == [2, 4]
    _flip_last_byte(ckpts / "step_000000004" / "model.safetensors")
    damaged_bytes = (ckpts / "step_000000004" / "model.safetensors").read_bytes()
    capsys.readouterr()

    assert train(6, "--resume", "latest") == 0
    captured = capsys.readouterr()
    assert "skipped damaged checkpoint step_000000004 (model.safetensors does not match its " \
           "SHA-256" in captured.err
    assert "resumed from" in captured.out and "step_000000002 at step 2" in captured.out
    [aside] = [p for p in ckpts.iterdir() if p.name.startswith("damaged-step_000000004-")]
    assert (aside / "model.safetensors").read_bytes() == damaged_bytes  # kept as it was
    # step 4 written anew beside the damaged one; step 2 pruned (keep_last_checkpoints=2)
    assert [s for s, _ in list_checkpoints(ckpts)] == [4, 6]

    for step in (4, 6):
        _flip_last_byte(ckpts / f"step_{step:09d}" / "optimizer.safetensors")
    before = _snapshot(run / "checkpoints")
    assert train(8, "--resume", "latest") == 2
    err = capsys.readouterr().err
    assert "no checkpoint under" in err and "verifies" in err
    for step in (4, 6):
        assert f"step_{step:09d}: optimizer.safetensors does not match its SHA-256" in err
    assert _snapshot(run / "checkpoints") == before  # nothing moved, nothing overwritten
