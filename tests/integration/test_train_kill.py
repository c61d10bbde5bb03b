"""SIGKILL a run (during a checkpoint write, then mid-run) and resume: it goes on, no incomplete
checkpoint is ever picked, at most one checkpoint interval is lost, and the final weights equal
an uninterrupted run's."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from train_support import (
    MICRO_MODEL,
    REPO,
    TINY_YAML,
    assert_same_state,
    shared_data,
    tiny_config,
    tiny_overrides,
)

from pictor.training.checkpoints import find_latest, list_checkpoints, load_checkpoint
from pictor.training.metrics import read_metrics
from pictor.training.trainer import train

STEPS, EVERY = 60, 20


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def _start(args: list[str], env_extra: dict[str, str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", **env_extra}
    return subprocess.Popen([sys.executable, "-m", "pictor.cli.main", "train", *args], cwd=REPO,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _wait_for(condition, proc: subprocess.Popen, timeout_seconds: float = 120.0) -> None:
    deadline = time.monotonic() + timeout_seconds
    while not condition():
        if proc.poll() is not None:
            out = proc.stdout.read().decode() if proc.stdout else ""
            raise AssertionError(f"training exited early ({proc.returncode}):\n{out}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.05)


def _kill(proc: subprocess.Popen) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def test_sigkill_during_checkpoint_write_and_mid_run(data, tmp_path):
    common = [*MICRO_MODEL, f"--training.max_steps={STEPS}",
              f"--training.checkpoint_every_steps={EVERY}", "--training.log_every_steps=1"]
    reference = train(tiny_config(*data, tmp_path / "reference", *common))

    run = tmp_path / "killed"
    ckpt_root = run / "checkpoints"
    args = ["--config", str(TINY_YAML), *tiny_overrides(*data, run), *common]

    # 1) killed while writing the step-40 checkpoint (the writer sleeps before the marker)
    proc = _start(args, {"PICTOR_TEST_CHECKPOINT_WRITE_DELAY_SECONDS": "60",
                         "PICTOR_TEST_CHECKPOINT_DELAY_AT_STEP": str(2 * EVERY)})

    def writing_step_40() -> bool:
        tmp = [p for p in ckpt_root.glob(".tmp-step_000000040-*")] if ckpt_root.is_dir() else []
        return bool(tmp) and (tmp[0] / "config.yaml").is_file()

    _wait_for(writing_step_40, proc)
    _kill(proc)
    assert any(p.name.startswith(".tmp-step_000000040") for p in ckpt_root.iterdir())
    assert [s for s, _ in list_checkpoints(ckpt_root)] == [EVERY]
    assert find_latest(ckpt_root).name == "step_000000020"

    # 2) resumed, then killed mid-run (no delay): the newest complete checkpoint is picked
    proc = _start([*args, "--resume", "latest"], {})
    _wait_for(lambda: any(r["step"] >= 30 for r in read_metrics(run / "metrics.jsonl")), proc)
    _kill(proc)
    last_logged = max(r["step"] for r in read_metrics(run / "metrics.jsonl"))
    latest = find_latest(ckpt_root)
    assert latest is not None
    latest_step = load_checkpoint(latest).step
    assert latest_step in (EVERY, 2 * EVERY)
    assert last_logged - latest_step <= EVERY  # at most one checkpoint interval is lost

    # 3) resumed to the end: identical to the run that was never interrupted
    proc = _start([*args, "--resume", "latest"], {})
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode()
    final = load_checkpoint(find_latest(ckpt_root))
    assert final.step == STEPS
    assert_same_state(reference.model.state_dict(), final.model)
    assert_same_state(reference.ema_module.state_dict(), final.ema)
    # leftovers of the killed write were cleaned up; only complete checkpoints remain
    assert all(not p.name.startswith(".") for p in Path(ckpt_root).iterdir())
    steps = [r["step"] for r in read_metrics(run / "metrics.jsonl")]
    assert steps == list(range(1, STEPS + 1))
