"""Resume equals uninterrupted: N steps at once == N/2 steps + resume + N/2, bit for bit on CPU."""

from __future__ import annotations

import pytest
from train_support import MICRO_MODEL, assert_same_state, shared_data, tiny_config

from pictor.training.checkpoints import load_checkpoint
from pictor.training.trainer import train


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def _resume_equals_uninterrupted(data, tmp_path, num_steps: int, *extra: str) -> None:
    common = [*MICRO_MODEL, f"--training.checkpoint_every_steps={num_steps // 2}",
              f"--training.log_every_steps={num_steps // 4}", *extra]
    whole = train(tiny_config(*data, tmp_path / "whole", *common,
                              f"--training.max_steps={num_steps}"))
    train(tiny_config(*data, tmp_path / "split", *common,
                      f"--training.max_steps={num_steps // 2}"))
    resumed = train(tiny_config(*data, tmp_path / "split", *common,
                                f"--training.max_steps={num_steps}"), resume="latest")
    assert resumed.step == num_steps and len(resumed.losses) == num_steps - num_steps // 2
    assert resumed.losses == whole.losses[num_steps // 2:]
    assert_same_state(whole.model.state_dict(), resumed.model.state_dict())
    assert_same_state(whole.ema_module.state_dict(), resumed.ema_module.state_dict())
    a = load_checkpoint(whole.last_checkpoint)
    b = load_checkpoint(resumed.last_checkpoint)
    assert a.data_position == b.data_position and a.rng == b.rng
    for idx, state in a.optimizer["state"].items():
        assert_same_state(state, b.optimizer["state"][idx])
    # the metrics log of the split run is one clean history, no duplicates
    steps = [line.split(",")[0] for line in
             (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert len(steps) == len(set(steps)) == 4


def test_resume_equals_uninterrupted_200_steps(data, tmp_path):
    _resume_equals_uninterrupted(data, tmp_path, 200)


def test_resume_with_grad_accumulation(data, tmp_path):
    _resume_equals_uninterrupted(data, tmp_path, 20, "--training.grad_accum_steps=2")


@pytest.mark.slow
def test_resume_equals_uninterrupted_2000_steps(data, tmp_path):
    _resume_equals_uninterrupted(data, tmp_path, 2000)
