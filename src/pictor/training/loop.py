"""The training loop shared by `pictor train` and `pictor train-autoencoder`.

`run_training(config, build_task, resume=...)` is the one loop of both commands. A *task* (the
diffusion task in training/trainer.py, the autoencoder task in training/autoencoder.py) supplies
a model, the per-example randomness of a batch and a loss; the loop does everything else:

    for step n = start .. max_steps - 1:
        indices  <- EpochSampler.next(global batch)             same on every rank
        draws    <- task.draw(global batch, generator)          timesteps, noise, dropout flags
        (task.prepare_step(n, EMA weights) where the task has it: on-policy data)
        for each of grad_accum_steps micro-batches of this rank's shard:
            loss <- task.loss(model, indices, draws)            autocast where enabled
            stop if loss is NaN/inf on any rank                 (before backward, no checkpoint)
            backward(loss / grad_accum_steps)                   DDP averages gradients over ranks
        clip the global gradient norm; lr <- warm-up/cosine(n); AdamW step; EMA update
        log, checkpoint, validate every N steps (rank 0 writes)

Determinism: everything random in a step comes from one torch.Generator (seeded by
training.seed and saved in checkpoints) and from the epoch permutations (a function of seed and
epoch), so a resumed run repeats the uninterrupted one bit for bit on CPU, and N processes
compute what one process computes with the same global batch.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from pictor.config import dump_yaml, load_yaml, save_config
from pictor.data.loader import EpochSampler
from pictor.hardware import has_native_bf16
from pictor.training import checkpoints as ckpts
from pictor.training.distributed import (
    DistInfo,
    all_reduce_sum,
    barrier,
    cleanup,
    init_distributed,
    shard_slice,
)
from pictor.training.ema import EMA
from pictor.training.metrics import MetricsLogger, plot_metrics_file


class NonFiniteLossError(RuntimeError):
    """The loss or the gradient norm became NaN/inf; the run stopped without a checkpoint."""


@dataclass
class TrainResult:
    run_dir: Path
    step: int                          # optimizer steps done in total
    losses: list[float]                # per-step loss of this invocation (mean over ranks)
    last_checkpoint: Path | None
    ema_module: nn.Module              # the EMA weights (for tests and export)
    model: nn.Module                   # the live weights


class Task(Protocol):
    """What a concrete training problem supplies to `run_training`."""

    model: nn.Module       # the module to optimize; its forward is what the loss calls
    num_examples: int      # size of the preloaded data set

    def draw(self, batch_size: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
        """Per-example randomness of a global batch; every tensor has batch_size rows."""
        ...

    def loss(self, model: nn.Module, indices: torch.Tensor,
             draws: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scalar mean loss of a micro-batch (indices (b,), draws sliced to b rows)."""
        ...

    def validate(self, ema_module: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        """Rank 0 only: write samples/metrics for the EMA weights; return scalars to log."""
        ...

    def finish(self, ema_module: nn.Module, run_dir: Path) -> None:
        """Rank 0 only: export final artefacts into run_dir/final."""
        ...

    # Optional: prepare_step(step, ema_module) -> None, called before every optimizer step
    # (0-based) with the EMA weights; an on-policy task (pictor.reward) samples its data there.


# ----------------------------------------------------------------------------------------------
# Learning rate, precision
# ----------------------------------------------------------------------------------------------


def lr_at(step: int, lr: float, warmup_steps: int, max_steps: int, schedule: str = "constant",
          min_lr_ratio: float = 0.1) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warm-up, then constant/cosine."""
    if warmup_steps > 0 and step < warmup_steps:
        return lr * (step + 1) / warmup_steps
    if schedule == "cosine":
        span = max(1, max_steps - warmup_steps)
        progress = min(1.0, (step - warmup_steps) / span)
        return lr * (min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))
    return lr


def autocast_dtype(mixed_precision: str, device: torch.device) -> torch.dtype | None:
    """None: full precision. "auto" -> bf16 where the device computes it natively (CUDA GPUs
    that support it, CPUs with AVX512-BF16 or AMX; pictor.hardware), else None: emulated bf16
    on other CPUs is many times slower than float32."""
    if mixed_precision == "no":
        return None
    if mixed_precision == "auto":
        return torch.bfloat16 if has_native_bf16(device) else None
    if mixed_precision == "fp16":
        if device.type != "cuda":
            raise ValueError("training.mixed_precision=fp16 needs a CUDA device; use bf16 or no "
                             "on CPU")
        return torch.float16
    return torch.bfloat16


# ----------------------------------------------------------------------------------------------
# The loop
# ----------------------------------------------------------------------------------------------


def run_training(config: Any, build_task: Callable[[DistInfo], Task], *,
                 resume: str | None = None, dist_info: DistInfo | None = None) -> TrainResult:
    """Train `build_task(dist)` as `config.training` / `config.optimizer` say.

    resume: None (fresh run; an existing run folder's checkpoints are left alone and new ones
    added), "latest" (newest complete checkpoint under run_dir/checkpoints, fresh if none) or a
    checkpoint folder.
    """
    tcfg = config.training
    if tcfg.num_threads:
        torch.set_num_threads(tcfg.num_threads)
    own_dist = dist_info is None
    dist = init_distributed(tcfg.device) if dist_info is None else dist_info
    try:
        return _run(config, build_task, resume, dist)
    finally:
        if own_dist:
            cleanup(dist)


def _run(config: Any, build_task: Callable[[DistInfo], Task], resume: str | None,
         dist: DistInfo) -> TrainResult:
    tcfg, ocfg = config.training, config.optimizer
    run_dir = Path(tcfg.output_dir)
    ckpt_root = run_dir / "checkpoints"
    per_rank = shard_slice(dist, tcfg.batch_size)
    micro = (per_rank.stop - per_rank.start)
    if micro % tcfg.grad_accum_steps:
        raise ValueError(f"training.batch_size={tcfg.batch_size} per process "
                         f"({micro}) must be divisible by training.grad_accum_steps="
                         f"{tcfg.grad_accum_steps}")
    micro //= tcfg.grad_accum_steps
    if resume is None and ckpts.list_checkpoints(ckpt_root, verify_hashes=False):
        # A fresh run would interleave its checkpoints with the old run's (and keep_last would
        # delete the new ones first).
        raise ValueError(f"{run_dir} already holds checkpoints of a run; continue it with "
                         f"--resume latest, or start afresh with another training.output_dir")

    # Before anything is built: a run whose checkpoints are all damaged stops here (exit 2).
    scan = ckpts.resolve_resume(resume, ckpt_root)
    resume_path = scan.path
    if dist.is_main:
        for path, problem in scan.damaged:  # newer than the one resumed from: kept, moved aside
            moved = ckpts.move_aside(path, problem)
            print(f"warning: skipped damaged checkpoint {path.name} ({problem}); moved it to "
                  f"{moved.name}", file=sys.stderr, flush=True)

    # Same seed on every rank: identical initial weights, data order and per-step randomness.
    torch.manual_seed(tcfg.seed)
    task = build_task(dist)
    model = task.model
    device = dist.device
    model.to(device)
    ema = EMA(model, decay=tcfg.ema_decay, halflife_steps=tcfg.ema_halflife_steps,
              warmup=tcfg.ema_warmup)
    optimizer = build_optimizer(model, ocfg)
    generator = torch.Generator().manual_seed(tcfg.seed)
    sampler = EpochSampler(task.num_examples, seed=tcfg.seed)

    start_step = 0
    if resume_path is not None:
        ck = ckpts.load_checkpoint(resume_path)
        _check_compatible(config, ck.config_yaml, resume_path)
        try:
            model.load_state_dict(ck.model)
            if ck.ema is not None:
                ema.load_state_dict(ck.ema, ck.ema_num_updates)
            optimizer.load_state_dict(ck.optimizer)
            sampler.set_position(ck.data_position)
            ckpts.restore_rng_state(ck.rng, {"train": generator})
        except (RuntimeError, KeyError, TypeError, IndexError, ValueError) as error:
            kind = type(error).__name__
            raise ValueError(f"checkpoint {resume_path} does not fit this run ({kind}: "
                             f"{str(error)[:500]}); resume from another checkpoint or start a "
                             f"new run in another training.output_dir") from None
        start_step = ck.step
        if dist.rank != 0:  # the saved global RNG states are rank 0's; keep ranks distinct
            torch.manual_seed(tcfg.seed * 1000003 + dist.rank * 7919 + start_step)
    elif dist.rank != 0:
        torch.manual_seed(tcfg.seed * 1000003 + dist.rank * 7919)

    if dist.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, run_dir / "config.yaml")
        ckpts.remove_stale_temp_dirs(ckpt_root)
    logger = MetricsLogger(run_dir, enabled=dist.is_main,
                           resume_step=start_step if resume_path is not None else None)
    if dist.is_main and resume_path is not None:
        print(f"resumed from {resume_path} at step {start_step}", flush=True)

    train_model: nn.Module = model
    if dist.enabled:
        # find_unused_parameters: some parameters (e.g. the U-Net's null-text token) take part
        # only in some forward passes.
        train_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=True)
    amp_dtype = autocast_dtype(tcfg.mixed_precision, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    config_yaml = dump_yaml(config)
    last_ckpt = resume_path
    losses: list[float] = []

    progress = None
    if dist.is_main and tcfg.progress_bar:
        from tqdm import tqdm

        progress = tqdm(total=tcfg.max_steps, initial=start_step, desc="train", unit="step",
                        dynamic_ncols=True)
    imgs_per_s: float | None = None

    def save(step_done: int) -> Path | None:
        path = None
        if dist.is_main:
            path = ckpts.save_checkpoint(ckpt_root, ckpts.Checkpoint(
                step=step_done, model=model.state_dict(), optimizer=optimizer.state_dict(),
                config_yaml=config_yaml, ema=ema.state_dict(), ema_num_updates=ema.num_updates,
                rng=ckpts.capture_rng_state({"train": generator}),
                data_position=sampler.position,
            ), keep_last=tcfg.keep_last_checkpoints)
        barrier(dist)
        return path

    prepare_step = getattr(task, "prepare_step", None)
    model.train()
    loop_start = time.perf_counter()  # training.max_wall_seconds counts from here
    final_step = max(start_step, tcfg.max_steps)
    for step in range(start_step, tcfg.max_steps):
        t_start = time.perf_counter()
        lr = lr_at(step, ocfg.lr, ocfg.warmup_steps, tcfg.max_steps, ocfg.lr_schedule,
                   ocfg.min_lr_ratio)
        for group in optimizer.param_groups:  # lr_scale: a group's own ratio (a GAN's two players)
            group["lr"] = lr * group.get("lr_scale", 1.0)
        if prepare_step is not None:  # e.g. reward fine-tuning samples a new round here
            prepare_step(step, ema.module)
        indices = sampler.next(tcfg.batch_size)                 # (B,) global batch
        draws = task.draw(tcfg.batch_size, generator)           # each (B, ...)
        step_loss = torch.zeros((), dtype=torch.float64)
        for m in range(tcfg.grad_accum_steps):
            sl = slice(per_rank.start + m * micro, per_rank.start + (m + 1) * micro)
            last_micro = m == tcfg.grad_accum_steps - 1
            sync = (contextlib.nullcontext() if (last_micro or not dist.enabled)
                    else train_model.no_sync())
            with sync:
                with torch.autocast(device.type, dtype=amp_dtype or torch.float32,
                                    enabled=amp_dtype is not None):
                    loss = task.loss(train_model, indices[sl], {k: v[sl] for k, v in draws.items()})
                value = loss.detach().float().cpu()
                bad = (~torch.isfinite(value)).to(torch.float64)
                reduced = all_reduce_sum(dist, torch.stack([value.double(), bad]))
                if reduced[1] > 0:
                    _stop_nonfinite("loss", float(reduced[0]), step + 1, last_ckpt, logger,
                                    progress, dist)
                step_loss += reduced[0] / dist.world_size / tcfg.grad_accum_steps
                scaled = loss / tcfg.grad_accum_steps
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(
            model.parameters(), tcfg.grad_clip_norm if tcfg.grad_clip_norm else float("inf"))
        if not torch.isfinite(grad_norm) and scaler is None:
            _stop_nonfinite("gradient norm", float(grad_norm), step + 1, last_ckpt, logger,
                            progress, dist)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        ema.update(model)
        step_done = step + 1
        losses.append(float(step_loss))

        # throughput of the training step itself (checkpoints and validation excluded)
        rate = tcfg.batch_size / max(time.perf_counter() - t_start, 1e-9)
        imgs_per_s = rate if imgs_per_s is None else 0.9 * imgs_per_s + 0.1 * rate
        if progress is not None:
            progress.update(1)
            progress.set_postfix(loss=f"{losses[-1]:.4f}", img_s=f"{imgs_per_s:.0f}",
                                 refresh=False)
        loop_seconds = time.perf_counter() - loop_start  # since this process's loop began
        out_of_time = False  # a wall-clock budget (equal budgets for the family comparison)
        if tcfg.max_wall_seconds is not None and step_done < tcfg.max_steps:
            over = float(loop_seconds >= tcfg.max_wall_seconds)
            out_of_time = bool(all_reduce_sum(dist, torch.tensor([over], dtype=torch.float64))[0])
        if step_done % tcfg.log_every_steps == 0 or step_done == tcfg.max_steps or out_of_time:
            logger.log(step_done, loss=losses[-1], lr=lr, grad_norm=float(grad_norm),
                       images_per_second=imgs_per_s, epoch=sampler.epoch,
                       loop_seconds=loop_seconds,  # a resume restarts this clock
                       **getattr(task, "loss_terms", {}))
        is_last = step_done == tcfg.max_steps or out_of_time
        if (tcfg.checkpoint_every_steps and step_done % tcfg.checkpoint_every_steps == 0) \
                or is_last:
            last_ckpt = save(step_done) or last_ckpt
        if tcfg.validation_every_steps and (step_done % tcfg.validation_every_steps == 0
                                            or is_last):
            if dist.is_main:
                scalars = task.validate(ema.module, step_done, run_dir)
                if scalars:
                    logger.log(step_done, **scalars)
            barrier(dist)
            model.train()
        if out_of_time:
            final_step = step_done
            if dist.is_main:
                print(f"training.max_wall_seconds={tcfg.max_wall_seconds:g} reached after step "
                      f"{step_done} of {tcfg.max_steps}: stopped with a checkpoint and final/",
                      file=sys.stderr, flush=True)
            break

    if progress is not None:
        progress.close()
    if dist.is_main:
        task.finish(ema.module, run_dir)
        logger.close()
        plot_metrics_file(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
    barrier(dist)
    if resume_path is not None and last_ckpt is None:
        last_ckpt = resume_path
    return TrainResult(run_dir=run_dir, step=final_step, losses=losses,
                       last_checkpoint=last_ckpt if dist.is_main else None,
                       ema_module=ema.module, model=model)


def _stop_nonfinite(what: str, value: float, step: int, last_ckpt: Path | None,
                    logger: MetricsLogger, progress: Any, dist: DistInfo) -> None:
    if progress is not None:
        progress.close()
    logger.log(step, **{what.replace(" ", "_"): value})
    logger.close()
    where = (f"the last good checkpoint is {last_ckpt} (untouched)" if last_ckpt is not None
             else "no checkpoint had been written yet")
    raise NonFiniteLossError(
        f"the {what} became {value} at step {step}{' on some rank' if dist.enabled else ''}; "
        f"training stopped without writing a checkpoint, and {where}. Lower optimizer.lr, "
        f"keep training.grad_clip_norm set, or check the data, then continue with "
        f"--resume latest.")


def build_optimizer(model: nn.Module, ocfg: Any) -> torch.optim.Optimizer:
    """The optimizer of optimizer.name. foreach: one multi-tensor kernel per update instead of
    a Python loop over parameters (torch's default on CPU is the loop); deterministic either
    way. A model with `optimizer_groups()` (pictor.networks.gan.GanPair) gives its own
    parameter groups."""
    groups = getattr(model, "optimizer_groups", None)
    params = groups() if groups is not None else model.parameters()
    if ocfg.name == "sgd":
        return torch.optim.SGD(params, lr=ocfg.lr, momentum=ocfg.betas[0],
                               weight_decay=ocfg.weight_decay, foreach=True)
    return torch.optim.AdamW(params, lr=ocfg.lr, betas=tuple(ocfg.betas),
                             weight_decay=ocfg.weight_decay, eps=ocfg.eps, foreach=True)


def _check_compatible(config: Any, saved_yaml: str, path: Path) -> None:
    """A checkpoint's weights only load into the same model: say so clearly if they differ."""
    saved = load_yaml(saved_yaml, str(path / "config.yaml")) or {}
    now = load_yaml(dump_yaml(config), "the current config") or {}
    if not isinstance(saved, dict):
        raise ValueError(f"{path / 'config.yaml'} is not a mapping of config sections")
    if saved.get("model") != now.get("model"):
        raise ValueError(f"checkpoint {path} was trained with model config {saved.get('model')}, "
                         f"but the current config has {now.get('model')}; resume with the "
                         f"checkpoint's config ({path / 'config.yaml'}) or start a new run "
                         f"(another training.output_dir)")
