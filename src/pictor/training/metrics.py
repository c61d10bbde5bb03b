"""Training records: a JSONL log (always), TensorBoard (when installed), a loss-curve PNG, sample
grids.

metrics.jsonl holds one JSON object per logged step, e.g.
`{"step": 100, "loss": 0.21, "lr": 2e-4, "grad_norm": 0.8, "images_per_second": 310.0,
"loop_seconds": 95.2}` (`loop_seconds`: wall time since the training loop of this process began,
validation and checkpoints included; a resumed run counts again from its resume).
When a run resumes from a checkpoint at step s, records after s (from the interrupted tail) are
dropped first, so the file always describes one consistent history.

The loss curve is drawn with Pillow (no matplotlib dependency): raw loss in light grey, an
exponential moving average in blue, axes with min/max labels.
"""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path
from typing import Any

import torch
from PIL import Image, ImageDraw


class MetricsLogger:
    """Appends records to `<run>/metrics.jsonl`; mirrors scalars to TensorBoard if available."""

    def __init__(self, run_dir: str | Path, *, enabled: bool = True,
                 resume_step: int | None = None, tensorboard: bool = True) -> None:
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self._tb = None
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            truncate_after(self.path, resume_step)
        elif self.path.exists():
            self.path.unlink()  # a fresh run in an existing folder starts a fresh log
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter  # needs the tensorboard package

                self._tb = SummaryWriter(log_dir=str(Path(run_dir) / "tensorboard"),
                                         purge_step=resume_step)
            except ImportError:
                self._tb = None

    def log(self, step: int, **values: Any) -> None:
        if not self.enabled:
            return
        record = {"step": int(step), **{k: _jsonable(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in values.items():
                if isinstance(v, (int, float)) and math.isfinite(float(v)):
                    self._tb.add_scalar(k, v, step)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
            self._tb = None


def _jsonable(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl (a torn last line from a killed run is skipped)."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def truncate_after(path: str | Path, step: int) -> None:
    """Keep only records with record["step"] <= step (and drop torn lines)."""
    path = Path(path)
    if not path.exists():
        return
    kept = [r for r in read_metrics(path) if r.get("step", 0) <= step]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
    tmp.replace(path)


def plot_loss_curve(steps: list[int], losses: list[float], path: str | Path, *,
                    title: str = "training loss", width: int = 640, height: int = 400,
                    smoothing: float | None = None) -> Path:
    """Draw loss vs step as a PNG with Pillow. Non-finite values are skipped.

    smoothing: EMA factor of the blue curve; None scales it with the number of points
    (about a 20th of the curve), so short runs are not flattened.
    """
    pts = [(s, v) for s, v in zip(steps, losses, strict=True) if math.isfinite(v)]
    if smoothing is None:
        smoothing = max(0.0, 1.0 - 20.0 / max(len(pts), 1))
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    left, right, top, bottom = 70, 20, 30, 45
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    draw.text((left, 8), title, fill="black")
    draw.rectangle([x0, y0, x1, y1], outline="black")
    if pts:
        smin, smax = pts[0][0], pts[-1][0]
        vmin, vmax = min(v for _, v in pts), max(v for _, v in pts)
        if smax == smin:
            smax = smin + 1
        if vmax == vmin:
            vmax = vmin + 1e-8 + abs(vmin) * 1e-3

        def xy(s: float, v: float) -> tuple[float, float]:
            return (x0 + (s - smin) / (smax - smin) * (x1 - x0),
                    y1 - (v - vmin) / (vmax - vmin) * (y1 - y0))

        # horizontal grid lines at quarter heights with value labels
        for i in range(5):
            v = vmin + (vmax - vmin) * i / 4
            _, y = xy(smin, v)
            draw.line([x0, y, x1, y], fill=(225, 225, 225))
            draw.text((4, y - 6), f"{v:.4g}", fill="black")
        for i in range(5):
            s = smin + (smax - smin) * i / 4
            x, _ = xy(s, vmin)
            draw.text((x - 12, y1 + 6), f"{int(round(s))}", fill="black")
        draw.text(((x0 + x1) // 2 - 12, height - 20), "step", fill="black")
        raw = [xy(s, v) for s, v in pts]
        if len(raw) > 1:
            draw.line(raw, fill=(190, 190, 190), width=1)
        ema, smooth = pts[0][1], []
        for s, v in pts:
            ema = smoothing * ema + (1 - smoothing) * v
            smooth.append(xy(s, ema))
        if len(smooth) > 1:
            draw.line(smooth, fill=(30, 90, 220), width=2)
        else:
            x, y = smooth[0]
            draw.ellipse([x - 2, y - 2, x + 2, y + 2], fill=(30, 90, 220))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return path


def plot_metrics_file(metrics_path: str | Path, png_path: str | Path, key: str = "loss") -> Path:
    records = [r for r in read_metrics(metrics_path) if isinstance(r.get(key), (int, float))]
    return plot_loss_curve([r["step"] for r in records], [float(r[key]) for r in records],
                           png_path, title=f"training {key}")


def save_image_grid(images: torch.Tensor, captions: list[str], path: Path, *,
                    cell: int = 128, columns: int | None = None) -> Path:
    """Images (n, 3, H, W) in [-1, 1] as a grid PNG, each upscaled to `cell` px with its caption."""
    n = images.shape[0]
    cols = columns or n
    rows = (n + cols - 1) // cols
    chars_per_line = max(8, cell // 6)  # Pillow's default bitmap font is ~6 px wide
    wrapped = [textwrap.wrap(c, chars_per_line)[:3] for c in captions]
    label_h = 4 + 12 * max([len(w) for w in wrapped] + [1])
    grid = Image.new("RGB", (cols * cell, rows * (cell + label_h)), "white")
    draw = ImageDraw.Draw(grid)
    arr = ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).cpu()
    for i in range(n):
        r, c = divmod(i, cols)
        im = Image.fromarray(arr[i].numpy()).resize((cell, cell), Image.Resampling.NEAREST)
        grid.paste(im, (c * cell, r * (cell + label_h)))
        for j, line in enumerate(wrapped[i] if i < len(wrapped) else []):
            draw.text((c * cell + 2, r * (cell + label_h) + cell + 2 + 12 * j), line, fill="black")
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path
