"""`pictor train --launcher spark`: the same trainer, launched by Spark's TorchDistributor.

TorchDistributor (pyspark.ml.torch.distributor, Spark >= 3.4) starts `num_processes` copies of
a function under torchrun and returns rank 0's result:
- local mode (`--spark-mode local`, the default): the processes run on the driver, as
  `torchrun --standalone --nproc_per_node=N` would (one box: a laptop, a single-node
  Databricks cluster);
- cluster mode (`--spark-mode cluster`): each process is a Spark barrier task on an executor;
  the tasks find each other through TorchDistributor's rendezvous (MASTER_ADDR/PORT of task 0).

Either way each process gets torchrun's RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT, and runs `pictor.training.trainer.train` with the config resolved once here, so
`pictor.training.distributed` joins the process group exactly as under torchrun: gloo on CPU,
nccl on GPUs (one per process; TorchDistributor sets CUDA_VISIBLE_DEVICES from the GPUs that
Spark assigned). The update is the same as with torchrun and the same number of processes.

In cluster mode the data, the text-embedding cache and the run folder must be paths every
executor sees (Databricks: /Volumes/... or /dbfs/...), and pictor must be installed on the
cluster (a wheel as a cluster library).

pyspark is imported here and in data/spark.py only, inside functions: it is an optional extra.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pictor.config import TrainConfig, from_dict, to_dict, validate

SPARK_MODES = ("local", "cluster")


@dataclass(frozen=True)
class SparkLaunch:
    """How TorchDistributor runs the trainer."""

    num_processes: int = 2  # processes (= ranks) in all; one GPU each when training on GPUs
    mode: str = "local"  # "local": on the driver; "cluster": barrier tasks on the executors
    master: str | None = None  # Spark master when no session is active (default local[*])
    use_gpu: bool | None = None  # None: from training.device (auto: GPUs if the driver has one)


def train_process(config_data: dict[str, Any], resume: str | None) -> dict[str, Any]:
    """What each of the N processes runs: the trainer, as under torchrun. Returns the same small
    summary on every rank (TorchDistributor's generated script has every rank write its result
    to one file, so identical values keep that file well-formed whichever rank writes last)."""
    from pictor.training.trainer import train

    config = from_dict(TrainConfig, config_data)
    validate(config)
    result = train(config, resume=resume)
    return {"run_dir": str(result.run_dir), "step": int(result.step)}


def _use_gpu(launch: SparkLaunch, config: TrainConfig, spark: Any) -> bool:
    if launch.use_gpu is not None:
        return launch.use_gpu
    device = config.training.device
    if device != "auto":
        return device.startswith("cuda")
    if launch.mode == "cluster":  # GPUs where Spark hands them to tasks
        return int(spark.conf.get("spark.task.resource.gpu.amount", "0") or 0) > 0
    import torch

    return torch.cuda.is_available()


def train_with_torch_distributor(config: TrainConfig, launch: SparkLaunch, *,
                                 resume: str | None = None) -> dict[str, Any]:
    """Run `train(config)` in launch.num_processes processes through TorchDistributor.
    Returns {"run_dir", "step"}; ValueError for bad settings, RuntimeError when a process
    fails (TorchDistributor's message carries the end of its output)."""
    if launch.mode not in SPARK_MODES:
        raise ValueError(f"spark mode {launch.mode!r}: choose {' or '.join(SPARK_MODES)}")
    if launch.num_processes < 1:
        raise ValueError(f"--num-processes must be >= 1, got {launch.num_processes}")
    if config.training.batch_size % launch.num_processes:
        raise ValueError(f"training.batch_size={config.training.batch_size} must be divisible "
                         f"by --num-processes ({launch.num_processes})")
    validate(config)
    try:
        from pyspark.ml.torch.distributor import TorchDistributor
    except ImportError as err:
        raise ValueError(f"--launcher spark needs pyspark ({err}); install the spark extra: "
                         "pip install 'pictor[spark]'") from None
    from pictor.data.spark import spark_session

    spark = spark_session(launch.master, app_name="pictor-train", progress=False)
    distributor = TorchDistributor(num_processes=launch.num_processes,
                                   local_mode=launch.mode == "local",
                                   use_gpu=_use_gpu(launch, config, spark))
    summary = distributor.run(train_process, to_dict(config), resume)
    if not isinstance(summary, dict):
        raise RuntimeError(f"TorchDistributor returned {summary!r} instead of the run summary")
    return summary
