"""`pictor train-layout-prior`: train a model's learned layout prior from text and masks alone.

The layout prior (pictor.networks.layout_prior) maps the frozen text tokens to where each word
belongs; its loss (pictor.training.grounding.layout_prior_loss) needs only the tokens and the
objects' masks, never the U-Net. So it trains on its own, in minutes: the cached text embeddings
of a shapes-world data set, the grounding table's masks, AdamW on the prior's 0.35M parameters.
Trained inside `pictor train` it shares the U-Net's small fine-tuning learning rate and stayed
near uniform (shapes-v11's training stage: loss 2.5 -> 2.3, and validation position 23/64 with
it against 55/64 with a prior trained here; docs/alignment.md).

    pictor train-layout-prior MODEL_DIR --data DIR -o OUT [--steps 3000] [--lr 1e-3]

OUT is MODEL_DIR with the prior's weights replaced (a model of the same config), plus
layout_prior_log.jsonl.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

UNET_FILE = "unet.safetensors"


def _stored_dtype(path: Path) -> torch.dtype:
    """The floating dtype a weights file stores (a float16 model stays float16)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor(next(iter(f.keys()))).dtype


@dataclass(frozen=True)
class LayoutPriorRun:
    steps: int = 3000            # AdamW steps
    batch_size: int = 256        # captions per step
    lr: float = 1e-3             # constant after a linear warm-up of 100 steps
    weight_decay: float = 0.01
    seed: int = 0
    log_every: int = 100


def train_layout_prior(model_dir: str | Path, data: str | Path, out: str | Path,
                       run: LayoutPriorRun = LayoutPriorRun(), *, cache_dir: str | Path | None
                       = None, progress: bool = True, log=print) -> Path:
    """Train the layout prior of the model in `model_dir` on shapes-world data `data` and write
    the model with the new prior to `out` (module docstring). Returns `out`."""
    from tqdm import tqdm

    from pictor.config import TrainConfig, load_config
    from pictor.data.loader import TextEmbeddingTable, open_dataset
    from pictor.networks.io import load_module, save_module
    from pictor.networks.unet import UNet, UNetConfig
    from pictor.text.encoders import load_tokenizer, text_encoder_identity
    from pictor.training.grounding import build_grounding_table, layout_prior_loss
    from pictor.training.trainer import _load_text_encoder

    model_dir = Path(model_dir)
    if not (model_dir / UNET_FILE).is_file() or not (model_dir / "config.yaml").is_file():
        raise ValueError(f"{model_dir} is not a model folder (it needs {UNET_FILE} and "
                         f"config.yaml: a training run's final/ or `pictor export-model` output)")
    config = load_config(model_dir / "config.yaml", TrainConfig, [])
    stored = _stored_dtype(model_dir / UNET_FILE)
    unet = load_module(UNet, UNetConfig, model_dir / UNET_FILE).float()
    if unet.layout_prior is None:
        raise ValueError(f"{model_dir} has no layout prior (model.layout_prior_width = 0); "
                         f"train one with --model.layout_prior_width=128 first")
    out = Path(out)
    if out.resolve() == model_dir.resolve():
        raise ValueError("write the new model to another folder (-o OUT), not over MODEL_DIR")
    t0 = time.perf_counter()
    text = config.text
    dataset = open_dataset(data, image_size=config.data.image_size)
    table = TextEmbeddingTable.build(
        dataset.captions, None, text_encoder_identity(text.spec, text.max_length),
        cache_dir=cache_dir, encode_loader=lambda: _load_text_encoder(config))
    grounding = build_grounding_table(
        dataset, load_tokenizer(text.spec), max_length=text.max_length,
        resolution=unet.config.layout_prior_size, words=config.training.grounding_words,
        log=log, progress=progress)
    rows = table.rows(dataset.captions)                                  # (N,)
    prior = unet.layout_prior.train()
    opt = torch.optim.AdamW(prior.parameters(), lr=run.lr, weight_decay=run.weight_decay)
    gen = torch.Generator().manual_seed(run.seed)
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "layout_prior_log.jsonl"
    losses: list[float] = []
    with open(log_path, "w", encoding="utf-8") as f:
        bar = tqdm(range(run.steps), desc="layout prior", unit="step", disable=not progress)
        for step in bar:
            for group in opt.param_groups:
                group["lr"] = run.lr * min(1.0, (step + 1) / 100)
            idx = torch.randint(0, len(rows), (run.batch_size,), generator=gen)
            r = rows[idx]
            context, mask = table.emb[r].float(), table.mask[r]        # (b, L, D), (b, L)
            tokens, entity, masks = grounding.batch(idx, "cpu")
            loss = layout_prior_loss(prior(context, mask), mask, tokens, entity, masks)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            if (step + 1) % run.log_every == 0 or step + 1 == run.steps:
                mean = sum(losses[-run.log_every:]) / len(losses[-run.log_every:])
                f.write(json.dumps({"step": step + 1, "layout_prior_loss": mean}) + "\n")
                bar.set_postfix(loss=f"{mean:.3f}")
    for src in model_dir.iterdir():  # the model folder as it was, then the new weights
        if src.is_file() and src.name != UNET_FILE:
            shutil.copyfile(src, out / src.name)
    save_module(unet.eval(), unet.config, out / UNET_FILE, dtype=stored)
    log(f"layout prior: {run.steps} steps, loss {losses[0]:.3f} -> "
        f"{sum(losses[-run.log_every:]) / len(losses[-run.log_every:]):.3f} "
        f"({time.perf_counter() - t0:.0f} s); model written to {out}")
    return out
