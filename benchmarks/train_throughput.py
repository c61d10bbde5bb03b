"""Training throughput (images/s) of the default U-Net against diffusers' UNet2DConditionModel.

One training step = forward + MSE loss + backward + AdamW step, on CPU with torch.set_num_threads
(default 2). Every model sees the same batch shape (B, 4, 16, 16) latent, the same float
timesteps, the same text context (B, L, 384) with a key-padding mask, and the same optimizer.

The diffusers models have the same number of parameters as ours (within 10%, checked), the same
resolution levels and cross-attention at the same levels (diffusers always adds a mid-block
transformer, as ours does). Ours differs in how it spends its parameters (see
pictor.networks.unet): no convolution after the nearest-neighbour upsampling, an up path that
mirrors the down path instead of ADM's extra block per level, attention blocks on the residual
stream (no proj_in/proj_out, GELU MLP instead of GEGLU), and the saved parameters spent at the
lowest resolution, where they cost the fewest FLOPs (the "Efficient U-Net" idea of Saharia et
al. 2022, App. B.1).

Models are measured interleaved (run r times each model in turn, the order rotating), and the
median of the runs is reported, because the machine may be shared.

    .venv/bin/python benchmarks/train_throughput.py            # ~5 min on 2 cores
    .venv/bin/python benchmarks/train_throughput.py --bf16     # adds bf16-autocast rows
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import time
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from common import environment, markdown_table, median, update_markdown_section, write_json
from pictor.networks.unet import UNet, unet_presets

NAME = "train_throughput"
PRESET = "shapes-small"

# diffusers comparators of the same size as the preset: (label, block_out_channels).
# All keep cross-attention at the preset's levels (8x8 and 4x4) and layers_per_block=1 (the
# smallest diffusers allows, hence its fastest); widths are multiples of 32 (its GroupNorm).
# - (64, 128, 128): our widths at 16x16 and 8x8, the lowest level narrowed until the parameter
#   counts match. The like-for-like comparison: same widths where the FLOPs are.
# - (32, 96, 160): half our width at 16x16; the cheapest diffusers layout of this size we found,
#   shown so that the table does not only hold the comparison that flatters us.
COMPARATORS = (
    ("diffusers (64,128,128)", (64, 128, 128)),
    ("diffusers (32,96,160)", (32, 96, 160)),
)


def diffusers_unet(block_out_channels: tuple[int, ...], attention_levels: tuple[int, ...],
                   in_channels: int, context_dim: int, head_dim: int, size: int):
    from diffusers import UNet2DConditionModel

    n = len(block_out_channels)
    down = tuple("CrossAttnDownBlock2D" if i in attention_levels else "DownBlock2D"
                 for i in range(n))
    up = tuple("CrossAttnUpBlock2D" if i in attention_levels else "UpBlock2D"
               for i in reversed(range(n)))
    return UNet2DConditionModel(
        sample_size=size, in_channels=in_channels, out_channels=in_channels,
        block_out_channels=block_out_channels, layers_per_block=1, down_block_types=down,
        up_block_types=up, cross_attention_dim=context_dim,
        attention_head_dim=[c // head_dim for c in block_out_channels],  # = number of heads
        norm_num_groups=32)


class Model:
    """A network with a uniform call signature and its own optimizer."""

    def __init__(self, label: str, net: torch.nn.Module, is_ours: bool, config: Any) -> None:
        self.label, self.net, self.is_ours, self.config = label, net, is_ours, config
        self.num_params = sum(p.numel() for p in net.parameters())
        self.optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def __call__(self, x, t, context, mask):
        if self.is_ours:
            return self.net(x, t, context, mask)
        return self.net(x, t, encoder_hidden_states=context, encoder_attention_mask=mask).sample

    def forward_mflops_per_image(self, x, t, context, mask) -> float:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            self(x[:1], t[:1], context[:1], mask[:1])
        return counter.get_total_flops() / 1e6


def make_batch(batch_size: int, channels: int, size: int, context_length: int,
               context_dim: int):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, channels, size, size, generator=g)
    target = torch.randn(batch_size, channels, size, size, generator=g)
    t = torch.rand(batch_size, generator=g) * 1000.0
    context = torch.randn(batch_size, context_length, context_dim, generator=g)
    # shapes-world prompts are 4-12 WordPiece tokens with [CLS] and [SEP]; the rest is padding
    lengths = torch.randint(4, 13, (batch_size,), generator=g).clamp(max=context_length)
    mask = torch.arange(context_length)[None, :] < lengths[:, None]
    return x, target, t, context, mask


def train_step(model: Model, batch, autocast: bool) -> None:
    x, target, t, context, mask = batch
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with ctx:
        loss = torch.nn.functional.mse_loss(model(x, t, context, mask).float(), target)
    model.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    model.optimizer.step()


def measure(models: list[Model], batch, num_runs: int, steps_per_run: int, warmup_steps: int,
            autocast: bool) -> dict[str, list[float]]:
    """images/s per run for each model, measured interleaved with a rotating order."""
    for m in models:
        for _ in range(warmup_steps):
            train_step(m, batch, autocast)
    batch_size = batch[0].shape[0]
    runs: dict[str, list[float]] = {m.label: [] for m in models}
    for r in range(num_runs):
        for k in range(len(models)):
            m = models[(r + k) % len(models)]
            start = time.perf_counter()
            for _ in range(steps_per_run):
                train_step(m, batch, autocast)
            seconds = (time.perf_counter() - start) / steps_per_run
            runs[m.label].append(batch_size / seconds)
        print(f"run {r + 1}/{num_runs}: " + ", ".join(
            f"{label} {v[-1]:.1f}" for label, v in runs.items()), flush=True)
    return runs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--runs", type=int, default=7, help="timed runs per model")
    parser.add_argument("--steps-per-run", type=int, default=3)
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context-length", type=int, default=16,
                        help="L of the text context (the encoders' default max_length)")
    parser.add_argument("--bf16", action="store_true",
                        help="also measure every model under bf16 autocast")
    parser.add_argument("--no-write", action="store_true",
                        help="print only; do not write the JSON or BENCHMARKS.md")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    cfg = unet_presets[PRESET]
    size = 16
    models = [Model(f"ours ({PRESET})", UNet(cfg).train(), True, dataclasses.asdict(cfg))]
    for label, widths in COMPARATORS:
        net = diffusers_unet(widths, cfg.attention_levels, cfg.in_channels, cfg.context_dim,
                             cfg.head_dim, size).train()
        models.append(Model(label, net, False, {"block_out_channels": widths,
                                                "layers_per_block": 1,
                                                "cross_attention_levels": cfg.attention_levels}))
    ours = models[0]
    for m in models[1:]:
        ratio = m.num_params / ours.num_params
        if not 0.9 <= ratio <= 1.1:
            raise ValueError(f"{m.label} has {m.num_params:,} parameters, {ratio:.2f}x ours "
                             f"({ours.num_params:,}); comparators must be within 10%")

    batch = make_batch(args.batch_size, cfg.in_channels, size, args.context_length,
                       cfg.context_dim)
    mflops = {m.label: m.forward_mflops_per_image(*[batch[i] for i in (0, 2, 3, 4)])
              for m in models}
    env_before = environment()
    results: dict[str, dict[str, Any]] = {}
    for precision in ["fp32"] + (["bf16-autocast"] if args.bf16 else []):
        runs = measure(models, batch, args.runs, args.steps_per_run, args.warmup_steps,
                       autocast=precision != "fp32")
        for m in models:
            results[f"{m.label} [{precision}]"] = {
                "model": m.label, "precision": precision, "num_params": m.num_params,
                "forward_mflops_per_image": round(mflops[m.label], 1),
                "images_per_second_median": round(median(runs[m.label]), 2),
                "images_per_second_runs": [round(v, 2) for v in runs[m.label]],
                "config": m.config,
            }

    rows = []
    for key, r in results.items():
        ours_key = f"{ours.label} [{r['precision']}]"
        speedup = results[ours_key]["images_per_second_median"] / r["images_per_second_median"]
        r["ours_speedup"] = round(speedup, 2)
        rows.append([r["model"], r["precision"], f"{r['num_params'] / 1e6:.2f}M",
                     f"{r['forward_mflops_per_image']:.0f}",
                     f"{r['images_per_second_median']:.1f}",
                     f"{min(r['images_per_second_runs']):.1f}-"
                     f"{max(r['images_per_second_runs']):.1f}",
                     "-" if key == ours_key else f"{speedup:.2f}x"])
        print(f"{key:45s} {rows[-1][2]:>7s} {rows[-1][3]:>5s} MFLOP  {rows[-1][4]:>6s} img/s  "
              f"ours/this {rows[-1][6]}")
    env_after = environment()
    data = {"settings": vars(args) | {"latent_shape": [cfg.in_channels, size, size],
                                      "context_dim": cfg.context_dim, "optimizer": "AdamW",
                                      "loss": "MSE", "preset": PRESET},
            "environment": env_before,
            "load_average_1min_after": env_after["load_average_1min"],
            "results": results}
    if args.no_write:
        return
    path = write_json(NAME, data)
    body = (
        f"Training step (forward + MSE + backward + AdamW) on a ({args.batch_size}, "
        f"{cfg.in_channels}, {size}, {size}) latent batch with a ({args.batch_size}, "
        f"{args.context_length}, {cfg.context_dim}) text context, "
        f"{args.threads} threads, {env_before['cpu']}, torch {env_before['torch']}. "
        f"Median of {args.runs} interleaved runs of {args.steps_per_run} steps; the machine was "
        f"shared (1-min load average {env_before['load_average_1min']:.1f} before, "
        f"{env_after['load_average_1min']:.1f} after), so compare ratios, not absolute numbers. "
        f"Written by `benchmarks/train_throughput.py` ({env_before['date_utc']}; raw: "
        f"`{path.relative_to(path.parents[2])}`).\n\n"
        + markdown_table(["model", "precision", "params", "fwd MFLOP/img", "img/s (median)",
                          "range", "ours / model"], rows)
    )
    update_markdown_section(NAME, body)


if __name__ == "__main__":
    main()
