"""Train the in-domain CLIP judge (`pictor train-clip`) on any captioned data set.

    pictor train-clip --data data/emoji-64 -o models/emoji-clip [--config configs/clip.yaml]

The data is a prepared shard folder (`pictor data prepare`) or an imagefolder (`pictor data
synth`), read whole into memory as uint8. The frozen text encoder embeds each unique caption
once (`TextEmbeddingTable`, cached on disk under data.cache_dir, or taken from the embeddings
`pictor data prepare --with-embeddings` stored beside the shards). Each step draws a batch from
a seeded permutation per epoch (`EpochSampler`), shifts every image by a few pixels (the only
augmentation: colours are what skin tones and styles are made of, and flips change meaning),
and minimises CLIP's symmetric InfoNCE loss (`clip_loss`).

What it writes into OUT: `clip.safetensors` (weights, ClipConfig and the training config in
the metadata), `config.yaml` (the resolved training config), `metrics.jsonl` (loss and
temperature per logged step) and `training_summary.json` (wall time, final loss, R-precision on
a sample of the training images: the fit, not a validation; held-out figures come from
`pictor eval-clip`).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from pictor.config import DataConfig, OptimizerConfig, to_dict
from pictor.networks.clip import ClipConfig, ClipModel

CLIP_FILE = "clip.safetensors"


@dataclass
class ClipTrainingConfig:
    # Images per step; every other image of the batch is a negative of each caption.
    batch_size: int = 256
    # Passes over the training images (the steps follow from the data set size: 20 epochs of
    # the 11,046 prepared emoji are 864 steps of 256)...
    epochs: float = 20.0
    # ...unless max_steps is set: then exactly that many optimiser steps.
    max_steps: int | None = None
    # Random translation of every training image by up to this many pixels (edge padding).
    shift_px: int = 4
    # Clip the global gradient norm to this value (None: no clipping).
    grad_clip_norm: float | None = 1.0
    # Seeds the initial weights, the data order and the shifts.
    seed: int = 0
    # Torch intra-op threads (None: torch's default).
    num_threads: int | None = None
    # Training images (at most) for the stored feature statistics and the fit's R-precision.
    num_fit_images: int = 2000
    # Log a metrics line every this many steps (and at the end).
    log_every_steps: int = 20
    # Show a tqdm progress bar.
    progress_bar: bool = True
    # Output folder (`-o` sets it).
    output_dir: str = "runs/clip"


@dataclass
class ClipTrainConfig:
    """Everything `pictor train-clip` needs; see configs/clip.yaml."""

    data: DataConfig = field(default_factory=lambda: DataConfig(path="data/emoji-64",
                                                                cache_dir="data/cache"))
    model: ClipConfig = field(default_factory=ClipConfig)
    optimizer: OptimizerConfig = field(default_factory=lambda: OptimizerConfig(
        lr=2e-3, weight_decay=0.05, warmup_steps=50, lr_schedule="cosine", min_lr_ratio=0.05))
    training: ClipTrainingConfig = field(default_factory=ClipTrainingConfig)


def validate_clip_config(config: ClipTrainConfig) -> None:
    """ValueError with the fix for settings the types alone do not rule out."""
    t, o = config.training, config.optimizer
    if t.batch_size < 2:
        raise ValueError(f"training.batch_size must be >= 2 (a contrastive batch needs "
                         f"negatives), got {t.batch_size}")
    if t.max_steps is not None and t.max_steps < 1 or not t.epochs > 0:
        raise ValueError("training.max_steps must be >= 1 (or null) and training.epochs > 0")
    if t.shift_px < 0 or t.log_every_steps < 1 or t.num_fit_images < 2:
        raise ValueError("training.shift_px must be >= 0, log_every_steps >= 1, "
                         "num_fit_images >= 2")
    if o.name != "adamw" or not o.lr > 0 or o.warmup_steps < 0:
        raise ValueError("the CLIP trainer uses optimizer.name=adamw with lr > 0 and "
                         "warmup_steps >= 0")
    if config.data.image_size != config.model.image_size:
        raise ValueError(f"data.image_size={config.data.image_size} differs from "
                         f"model.image_size={config.model.image_size}; set both")
    if config.model.text_encoder == "trainable":
        raise ValueError("model.text_encoder must be a frozen encoder ('minilm' or a local "
                         "Hugging Face folder), not 'trainable'")


# ---------------------------------------------------------------------------------------------
# The loss
# ---------------------------------------------------------------------------------------------
def clip_loss(logits: torch.Tensor, caption_ids: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE over a batch (CLIP, Fig. 3; van den Oord et al. 2018):

        L = 1/2 [ CE(logits, targets) + CE(logits^T, targets^T) ],  logits = exp(t) I_e T_e^T

    logits (B, B): image i against caption j. With caption_ids (B,) the targets of row i are
    spread evenly over every j whose caption equals i's (a repeated caption is not a negative
    of itself); without them, or with all ids distinct, the targets are the identity, CLIP's
    `labels = arange(n)`."""
    if logits.ndim != 2 or logits.shape[0] != logits.shape[1]:
        raise ValueError(f"logits must be (B, B), got {tuple(logits.shape)}")
    if caption_ids is None:
        targets = torch.eye(logits.shape[0], dtype=logits.dtype, device=logits.device)
    else:
        same = (caption_ids[:, None] == caption_ids[None, :]).to(logits.dtype)   # (B, B)
        targets = same / same.sum(1, keepdim=True)
    # targets is symmetric, so its rows are also the targets of the caption-to-image side
    image_to_text = torch.nn.functional.cross_entropy(logits, targets)
    text_to_image = torch.nn.functional.cross_entropy(logits.T, targets)
    return (image_to_text + text_to_image) / 2


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------
def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) in [-1, 1] -> uint8 [0, 255] (exact for images the loader read from 8 bit)."""
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8)


def load_images_uint8(dataset: Any, batch_size: int = 256) -> torch.Tensor:
    """Every image of a pictor.data.loader data set as (N, 3, H, W) uint8 (a quarter of the
    memory of float32: 11k emoji take 135 MB)."""
    out = []
    for start in range(0, len(dataset), batch_size):
        batch = [dataset[i]["image"] for i in range(start, min(len(dataset), start + batch_size))]
        out.append(to_uint8(torch.stack(batch)))
    return torch.cat(out)


def text_table(captions: list[str], config: ClipConfig, *, cache_dir: str | Path | None,
               dataset: object = None) -> Any:
    """The frozen encoder's (emb, mask) of every unique caption: a pictor.data.loader
    TextEmbeddingTable, cached on disk and keyed like `pictor train`'s."""
    from pictor.data.loader import TextEmbeddingTable, prepared_text_table
    from pictor.text.encoders import load_text_encoder, text_encoder_identity

    identity = text_encoder_identity(config.text_encoder, config.text_max_length)
    table = TextEmbeddingTable.build(
        captions, None, identity, cache_dir=cache_dir,
        encode_loader=lambda: load_text_encoder(config.text_encoder,
                                                config.text_max_length).encode,
        prepared=prepared_text_table(dataset, identity))
    if table.emb.shape[-1] != config.text_dim:
        raise ValueError(f"the text encoder {config.text_encoder!r} gives {table.emb.shape[-1]}-d "
                         f"tokens but model.text_dim is {config.text_dim}; set "
                         f"--model.text_dim={table.emb.shape[-1]}")
    return table


def shift_images(x: torch.Tensor, shift_px: int, generator: torch.Generator) -> torch.Tensor:
    """uint8 (B, 3, H, W) -> float (B, 3, H, W) in [-1, 1], each image translated by an
    independent integer offset in [-shift_px, shift_px]^2 (edge pixels repeated)."""
    x = x.float() / 127.5 - 1.0
    if shift_px == 0:
        return x
    b, _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (shift_px,) * 4, mode="replicate")
    offsets = torch.randint(0, 2 * shift_px + 1, (b, 2), generator=generator)
    return torch.stack([padded[i, :, dy:dy + h, dx:dx + w]
                        for i, (dy, dx) in enumerate(offsets.tolist())])


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def _optimizer(model: ClipModel, o: OptimizerConfig) -> torch.optim.Optimizer:
    # CLIP decays only the weight matrices and kernels: gains, biases, the pooling query and
    # the temperature are left alone.
    named = list(model.named_parameters())
    decay = [p for n, p in named if p.ndim >= 2 and n != "text_head.query"]
    other = [p for n, p in named if p.ndim < 2 or n == "text_head.query"]
    return torch.optim.AdamW([{"params": decay, "weight_decay": o.weight_decay},
                              {"params": other, "weight_decay": 0.0}],
                             lr=o.lr, betas=o.betas, eps=o.eps)


def num_steps(config: ClipTrainConfig, num_images: int) -> int:
    t = config.training
    if t.max_steps is not None:
        return t.max_steps
    return max(1, math.ceil(t.epochs * num_images / t.batch_size))


def fit_indices(num_images: int, limit: int, seed: int) -> torch.Tensor:
    """A seeded sample of at most `limit` training images (sorted), for the statistics."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randperm(num_images, generator=g)[:limit].sort().values


def train_clip(config: ClipTrainConfig) -> dict[str, Any]:
    """Train (module docstring), write OUT, return the training summary."""
    from tqdm import tqdm

    from pictor.config import save_config
    from pictor.data.loader import EpochSampler, open_dataset
    from pictor.evaluation.clip_metrics import distinct, r_precision
    from pictor.evaluation.feature_training import warmup_cosine
    from pictor.networks.io import save_module

    validate_clip_config(config)
    t, o = config.training, config.optimizer
    if t.num_threads is not None:
        torch.set_num_threads(t.num_threads)
    dataset = open_dataset(config.data.path, config.data.image_size, config.data.max_images)
    if len(dataset) < 2:
        raise ValueError(f"{config.data.path} holds {len(dataset)} image(s); contrastive "
                         "training needs at least 2")
    images = load_images_uint8(dataset)                                   # (N, 3, H, W) uint8
    captions = dataset.captions
    table = text_table(captions, config.model, cache_dir=config.data.cache_dir, dataset=dataset)
    rows = table.rows(captions)                                           # (N,)
    batch_size = min(t.batch_size, len(dataset))
    steps = num_steps(config, len(dataset))

    torch.manual_seed(t.seed)  # after the text encoder, whose loading may draw random numbers
    model = ClipModel(config.model)
    optimizer = _optimizer(model, o)
    floor = o.min_lr_ratio if o.lr_schedule == "cosine" else 1.0  # "constant": no decay
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, o.warmup_steps, steps, floor))
    sampler = EpochSampler(len(dataset), t.seed)
    shifts = torch.Generator().manual_seed(t.seed)
    out = Path(t.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(config, out / "config.yaml")
    log = (out / "metrics.jsonl").open("w")
    start = time.perf_counter()
    running = None
    bar = tqdm(range(steps), desc="train-clip", unit="step", disable=not t.progress_bar)
    for step in bar:
        idx = sampler.next(batch_size)                                    # (B,)
        x = shift_images(images.index_select(0, idx), t.shift_px, shifts)  # (B, 3, H, W)
        emb, mask = table.lookup(rows.index_select(0, idx))               # (B, L, D), (B, L)
        loss = clip_loss(model(x, emb, mask), rows.index_select(0, idx))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if t.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), t.grad_clip_norm)
        optimizer.step()
        scheduler.step()
        value = float(loss.detach())
        if not math.isfinite(value):
            raise ValueError(f"the loss is {value} at step {step + 1}; lower optimizer.lr")
        running = value if running is None else 0.95 * running + 0.05 * value
        if (step + 1) % t.log_every_steps == 0 or step + 1 == steps:
            line = {"step": step + 1, "loss": round(value, 5), "loss_ema": round(running, 5),
                    "logit_scale": round(float(model.scale().detach()), 3),
                    "lr": scheduler.get_last_lr()[0], "epoch": sampler.epoch,
                    "seconds": round(time.perf_counter() - start, 1)}
            log.write(json.dumps(line) + "\n")
            log.flush()
            bar.set_postfix(loss=f"{running:.4f}", scale=f"{float(model.scale().detach()):.1f}")
    log.close()
    train_seconds = time.perf_counter() - start

    model.eval()
    fit = fit_indices(len(dataset), t.num_fit_images, t.seed)
    with torch.inference_mode():
        x = images.index_select(0, fit).float() / 127.5 - 1.0
        image_emb = torch.cat([model.encode_image(x[i:i + 256]) for i in range(0, len(x), 256)])
        model.feature_mean.copy_(image_emb.mean(0))
        model.feature_std.copy_(image_emb.std(0).clamp_min(1e-6))
        fit_captions, fit_index = distinct([captions[i] for i in fit.tolist()])
        text_emb = model.encode_text(*table.encode(fit_captions))        # (U, E)
    path = out / CLIP_FILE
    save_module(model, config.model, path,
                extra_metadata={"train_config": json.dumps(to_dict(config)),
                                "data_fingerprint": dataset.fingerprint()})
    fit_r = r_precision(image_emb.double().numpy(), fit_index, text_emb.double().numpy(),
                        seed=t.seed)
    summary = {"file": CLIP_FILE, "data": str(config.data.path), "num_images": len(dataset),
               "num_captions": len(set(captions)), "steps": steps, "batch_size": batch_size,
               "train_seconds": round(train_seconds, 1), "torch_threads": torch.get_num_threads(),
               "final_loss_ema": round(running or 0.0, 5),
               "logit_scale": round(float(model.scale().detach()), 3),
               "parameters": sum(p.numel() for p in model.parameters()),
               "fit_r_precision": fit_r.to_dict(), "model": asdict(config.model)}
    (out / "training_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def export_clip(clip_dir: str | Path, out_dir: str | Path, dtype: torch.dtype) -> Path:
    """`pictor export-model` of a train-clip folder: clip.safetensors stored in `dtype` with its
    config and training record (header metadata), config.yaml, metrics.jsonl and
    training_summary.json beside it (float16 halves a judge to ship; loaded back into float32)."""
    import shutil

    from safetensors import safe_open

    from pictor.networks.io import load_module, save_module

    clip_dir, out_dir = Path(clip_dir), Path(out_dir)
    model = load_module(ClipModel, ClipConfig, clip_dir / CLIP_FILE)
    with safe_open(str(clip_dir / CLIP_FILE), framework="pt") as f:
        metadata = f.metadata() or {}
    extra = {k: v for k, v in metadata.items() if k in ("train_config", "data_fingerprint")}
    out_dir.mkdir(parents=True, exist_ok=True)
    save_module(model, model.config, out_dir / CLIP_FILE, extra_metadata=extra, dtype=dtype)
    for name in ("config.yaml", "metrics.jsonl", "training_summary.json"):
        if (clip_dir / name).is_file():
            shutil.copy2(clip_dir / name, out_dir / name)
    return out_dir
