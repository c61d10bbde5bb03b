"""DiffAugment: differentiable augmentation of both real and generated images before the
discriminator (Zhao et al. 2020, "Differentiable Augmentation for Data-Efficient GAN Training",
NeurIPS; the ops and magnitudes of their DiffAugment_pytorch.py).

Ops on images (B, 3, H, W) in [-1, 1], each with per-example random parameters:
    brightness   x + b,                        b ~ U[-0.5, 0.5)
    saturation   (x - mean_c x) * s + mean_c x, s ~ U[0, 2)      (mean over channels)
    contrast     (x - mean x) * k + mean x,     k ~ U[0.5, 1.5)   (mean over C, H, W)
    translation  content moved by (dy, dx), integers in [-r, r], r = round(H / 8); what comes
                 in from outside is zero
    cutout       a square of side round(H / 2) set to zero, its centre uniform over the image
                 (clipped at the borders)
"color" is brightness, saturation and contrast in that order.

Parameters are drawn first (`draw_params`, from the training loop's generator, so a resumed run
draws the same) and then applied (`augment`): the same parameters can be applied to several
tensors (e.g. one real image judged with its own and with a mismatched caption), and every op
is differentiable in x, so the generator learns through it.
"""

from __future__ import annotations

import torch

POLICY_OPS = {"color": ("brightness", "saturation", "contrast"),
              "translation": ("translation",), "cutout": ("cutout",)}
TRANSLATION_RATIO = 0.125
CUTOUT_RATIO = 0.5


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> the ops in order; '' -> none. ValueError on unknown names."""
    names = [p.strip() for p in policy.split(",") if p.strip()]
    unknown = [n for n in names if n not in POLICY_OPS]
    if unknown:
        raise ValueError(f"unknown DiffAugment policy {unknown}; use a comma-separated subset of "
                         f"{', '.join(POLICY_OPS)} (or '' for none)")
    return tuple(op for n in names for op in POLICY_OPS[n])


def draw_params(ops: tuple[str, ...], batch: int, size: int, generator: torch.Generator
                ) -> dict[str, torch.Tensor]:
    """Random parameters of `ops` for a batch of size x size images, each (B, ...) on CPU."""
    out: dict[str, torch.Tensor] = {}
    for op in ops:
        if op == "brightness":
            out[op] = torch.rand(batch, generator=generator) - 0.5
        elif op == "saturation":
            out[op] = torch.rand(batch, generator=generator) * 2.0
        elif op == "contrast":
            out[op] = torch.rand(batch, generator=generator) + 0.5
        elif op == "translation":
            r = int(size * TRANSLATION_RATIO + 0.5)
            out[op] = torch.randint(-r, r + 1, (batch, 2), generator=generator)   # (dy, dx)
        elif op == "cutout":
            out[op] = torch.randint(0, size, (batch, 2), generator=generator)     # centre (y, x)
    return out


def translate(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """out[b, :, i, j] = x[b, :, i - dy_b, j - dx_b], zero where that lies outside; shift
    (B, 2) integer (dy, dx)."""
    b, _, h, w = x.shape
    dy, dx = shift[:, 0].to(x.device), shift[:, 1].to(x.device)
    rows = torch.arange(h, device=x.device)[None, :] - dy[:, None]           # (B, H)
    cols = torch.arange(w, device=x.device)[None, :] - dx[:, None]           # (B, W)
    valid = (((rows >= 0) & (rows < h))[:, :, None]
             & ((cols >= 0) & (cols < w))[:, None, :])                       # (B, H, W)
    batch = torch.arange(b, device=x.device)[:, None, None]
    moved = x.permute(0, 2, 3, 1)[batch, rows.clamp(0, h - 1)[:, :, None],
                                  cols.clamp(0, w - 1)[:, None, :]]         # (B, H, W, C)
    return (moved * valid[..., None].to(x.dtype)).permute(0, 3, 1, 2)


def cutout_mask(centre: torch.Tensor, size: int, dtype: torch.dtype = torch.float32
                ) -> torch.Tensor:
    """(B, 1, size, size): 0 inside the square of side round(size * CUTOUT_RATIO) whose top-left
    corner is centre - side // 2 (clipped at the borders), 1 elsewhere."""
    side = int(size * CUTOUT_RATIO + 0.5)
    top = centre[:, 0] - side // 2
    left = centre[:, 1] - side // 2
    idx = torch.arange(size)
    in_rows = (idx[None, :] >= top[:, None]) & (idx[None, :] < top[:, None] + side)    # (B, S)
    in_cols = (idx[None, :] >= left[:, None]) & (idx[None, :] < left[:, None] + side)
    box = in_rows[:, :, None] & in_cols[:, None, :]                                     # (B, S, S)
    return (~box).to(dtype)[:, None]


def augment(x: torch.Tensor, params: dict[str, torch.Tensor]) -> torch.Tensor:
    """Apply the ops of `params` (draw_params' order) to x (B, 3, H, W)."""
    for op, p in params.items():
        p = p.to(x.device)
        if op == "brightness":
            x = x + p.to(x.dtype)[:, None, None, None]
        elif op == "saturation":
            mean = x.mean(dim=1, keepdim=True)
            x = (x - mean) * p.to(x.dtype)[:, None, None, None] + mean
        elif op == "contrast":
            mean = x.mean(dim=(1, 2, 3), keepdim=True)
            x = (x - mean) * p.to(x.dtype)[:, None, None, None] + mean
        elif op == "translation":
            x = translate(x, p)
        elif op == "cutout":
            x = x * cutout_mask(p.cpu(), x.shape[-1], x.dtype).to(x.device)
        else:
            raise ValueError(f"unknown DiffAugment op {op!r}")
    return x
