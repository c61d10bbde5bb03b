"""2-process DDP (gloo on loopback) equals 1 process with the same global batch."""

from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.multiprocessing as mp
from train_support import MICRO_MODEL, shared_data, tiny_config

from pictor.training.checkpoints import find_latest, load_checkpoint
from pictor.training.metrics import read_metrics
from pictor.training.trainer import train

# SGD, whose update is linear in the gradient: the two set-ups sum the same float32 gradients
# in another order (2 ranks x 2 micro-batches of 2 vs one batch of 8), which moves each sum by
# a few ulps (relative ~1e-7), and a linear update keeps that relative size over 12 steps, so
# rtol 1e-4 is ~1000x the expected difference. (Adam would not do: a conv bias right before a
# GroupNorm has an exactly-zero true gradient, whose computed value is rounding noise, and Adam
# turns its sign into a +-lr step.) lr 0.05 without warm-up makes every weight move far more
# than the tolerance (checked below), so equality is not met by standing still.
COMMON = [*MICRO_MODEL, "--training.batch_size=8", "--training.max_steps=12",
          "--training.checkpoint_every_steps=6", "--training.log_every_steps=1",
          "--optimizer.name=sgd", "--optimizer.lr=0.05", "--optimizer.warmup_steps=0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return shared_data(tmp_path_factory)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world_size: int, port: int, data, cache, out, extra) -> None:
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(world_size)})
    train(tiny_config(data, cache, out, *COMMON, *extra))


def test_two_processes_equal_one(data, tmp_path):
    # one process, whole global batch of 8 at once
    single = train(tiny_config(*data, tmp_path / "single", *COMMON))

    # two processes of 4 examples each, each accumulating two micro-batches of 2
    out = tmp_path / "ddp"
    mp.spawn(_worker, args=(2, _free_port(), *data, out, ["--training.grad_accum_steps=2"]),
             nprocs=2, join=True)

    ddp = load_checkpoint(find_latest(out / "checkpoints"))
    assert ddp.step == 12
    halfway = load_checkpoint(out / "checkpoints" / "step_000000006")
    moved = max(float((ddp.model[k] - halfway.model[k]).abs().max()) for k in ddp.model)
    assert moved > 1e-3  # 100x the tolerance: the comparison below is not met by standing still
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp.model[name], value, rtol=1e-4, atol=1e-5,
                                   msg=f"weights differ: {name}")
    for name, value in single.ema_module.state_dict().items():
        torch.testing.assert_close(ddp.ema[name], value, rtol=1e-4, atol=1e-5)
    ddp_losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single.losses),
                               rtol=1e-4, atol=1e-6)
    # only rank 0 wrote: one run folder, one set of checkpoints
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == [
        "step_000000006", "step_000000012"]
