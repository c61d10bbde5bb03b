"""`pictor train --launcher spark`: TorchDistributor with 2 CPU processes on local Spark trains
exactly as torchrun with 2 processes does.

Tolerance: none (bit-identical weights). The launcher is the only difference: both runs are 2
ranks with the same config, seeds, shards per rank and thread count (1), so every rank computes
the same float32 operations in the same order; gloo's allreduce of 2 ranks gives each rank
a + b, and float addition is commutative, so the averaged gradients, and hence every update,
are the same bits whichever launcher started the processes.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from train_support import MICRO_MODEL, TINY_YAML, shared_data, tiny_overrides

from pictor.training.checkpoints import find_latest, load_checkpoint
from pictor.training.metrics import read_metrics

pytest.importorskip("pyspark")

STEPS = [*MICRO_MODEL, "--training.batch_size=8", "--training.max_steps=12",
         "--training.checkpoint_every_steps=6", "--training.log_every_steps=1",
         "--training.validation_every_steps=0"]


def _run(args: list[str]) -> subprocess.CompletedProcess:
    # Spark's driver binds to loopback, not to the machine's network address
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "SPARK_LOCAL_IP": "127.0.0.1"}
    done = subprocess.run([sys.executable, *args], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, f"{args[:4]} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


@pytest.mark.slow
def test_torch_distributor_equals_torchrun(tmp_path_factory, tmp_path):
    data, cache = shared_data(tmp_path_factory)
    by_torchrun, by_spark = tmp_path / "torchrun", tmp_path / "spark"
    _run(["-m", "torch.distributed.run", "--standalone", "--nnodes=1", "--nproc_per_node=2",
          "-m", "pictor.cli.main", "train", "--config", str(TINY_YAML),
          *tiny_overrides(data, cache, by_torchrun, *STEPS)])
    spark = _run(["-m", "pictor.cli.main", "train", "--launcher", "spark", "--num-processes", "2",
                  "--spark-master", "local[2]", "--config", str(TINY_YAML),
                  *tiny_overrides(data, cache, by_spark, *STEPS)])
    assert "on 2 processes (TorchDistributor)" in spark.stdout

    a = load_checkpoint(find_latest(by_torchrun / "checkpoints"))
    b = load_checkpoint(find_latest(by_spark / "checkpoints"))
    assert a.step == b.step == 12
    # the weights moved between the two checkpoints: equality is not met by standing still
    halfway = load_checkpoint(by_spark / "checkpoints" / "step_000000006")
    assert max(float((b.model[k] - halfway.model[k]).abs().max()) for k in b.model) > 1e-4
    for which in ("model", "ema"):
        left, right = getattr(a, which), getattr(b, which)
        assert left.keys() == right.keys()
        different = [k for k in left if not torch.equal(left[k], right[k])]
        assert not different, f"{which} tensors differ: {different[:5]}"
    losses = [[r["loss"] for r in read_metrics(run / "metrics.jsonl")]
              for run in (by_torchrun, by_spark)]
    assert len(losses[0]) == 12 and losses[0] == losses[1]
    # rank 0 alone wrote the run folder, as under torchrun
    assert sorted(p.name for p in (by_spark / "checkpoints").iterdir()) == [
        "step_000000006", "step_000000012"]


def test_spark_launcher_refuses_a_batch_it_cannot_split(tmp_path, capsys):
    from pictor.cli.main import main

    code = main(["train", "--launcher", "spark", "--num-processes", "3", "--config",
                 str(TINY_YAML), f"--training.output_dir={tmp_path / 'run'}"])
    assert code == 2
    assert "must be divisible by --num-processes (3)" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
