"""Small PNG charts for evaluation reports, drawn with Pillow (no plotting library needed).

One chart is a row of panels; a panel plots points (x, y) with optional vertical error bars,
joined by a line when x is numeric, side by side when x is categorical (sampler names):

    plot_panels("score_vs_steps.png", "geneval-shapes vs steps", [
        Panel("steps", "overall score", [5, 10, 20], [0.4, 0.6, 0.7], low=[...], high=[...],
              y_range=(0, 1)),
        Panel("steps", "seconds per image", [5, 10, 20], [0.05, 0.1, 0.2]),
    ])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

PANEL_WIDTH_PX = 440
PANEL_HEIGHT_PX = 330
_MARGIN = {"left": 62, "right": 18, "top": 34, "bottom": 48}
_LINE = (30, 90, 220)
_GRID = (228, 228, 228)


@dataclass
class Panel:
    """One panel: x values (numbers or labels), y values and optional error bars."""

    x_label: str
    y_label: str
    xs: Sequence[float | int | str]  # numeric: placed by value; strings: equally spaced
    ys: Sequence[float]
    low: Sequence[float] | None = None  # lower ends of the error bars
    high: Sequence[float] | None = None  # upper ends
    y_range: tuple[float, float] | None = None  # None: from 0 (or the minimum) to the maximum
    value_format: str = "{:.3f}"  # label printed above each point


def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    """Pillow's built-in scalable font (Pillow >= 10.1 with FreeType, as pinned wheels have)."""
    return ImageFont.load_default(size=size)


def _nice_range(values: Sequence[float]) -> tuple[float, float]:
    finite = [v for v in values if math.isfinite(v)]
    if not finite:
        return 0.0, 1.0
    lo, hi = min(0.0, min(finite)), max(finite)
    if hi <= lo:
        hi = lo + 1.0
    return lo, hi + 0.08 * (hi - lo)


def _draw_panel(draw: ImageDraw.ImageDraw, origin: tuple[int, int], panel: Panel) -> None:
    normal, small = font(13), font(11)
    ox, oy = origin
    x0, y0 = ox + _MARGIN["left"], oy + _MARGIN["top"]
    x1, y1 = ox + PANEL_WIDTH_PX - _MARGIN["right"], oy + PANEL_HEIGHT_PX - _MARGIN["bottom"]
    draw.rectangle([x0, y0, x1, y1], outline="black")
    bars = [v for v in list(panel.low or []) + list(panel.high or [])]
    y_lo, y_hi = panel.y_range or _nice_range(list(panel.ys) + bars)
    categorical = any(isinstance(x, str) for x in panel.xs)
    n = len(panel.xs)
    log = False
    if categorical or n == 1:
        positions = [(i + 0.5) / n for i in range(n)]
    else:
        xs = [float(x) for x in panel.xs]
        lo, hi = min(xs), max(xs)
        log = lo > 0 and hi / lo >= 8  # e.g. steps 5..50: spread them evenly
        f = (lambda v: math.log(v)) if log else (lambda v: v)
        positions = [0.06 + 0.88 * (f(x) - f(lo)) / ((f(hi) - f(lo)) or 1.0) for x in xs]

    def px(pos: float, y: float) -> tuple[float, float]:
        return (x0 + pos * (x1 - x0), y1 - (y - y_lo) / (y_hi - y_lo) * (y1 - y0))

    for i in range(6):  # horizontal grid with value labels
        value = y_lo + (y_hi - y_lo) * i / 5
        _, y = px(0, value)
        if 0 < i < 5:
            draw.line([x0 + 1, y, x1 - 1, y], fill=_GRID)
        draw.text((x0 - 6, y), f"{value:.3g}", fill="black", font=small, anchor="rm")
    for pos, x in zip(positions, panel.xs, strict=True):
        tx, _ = px(pos, y_lo)
        draw.line([tx, y1, tx, y1 + 4], fill="black")
        label = x if isinstance(x, str) else f"{x:g}"
        draw.text((tx, y1 + 7), label, fill="black", font=small, anchor="mt")
    x_label = panel.x_label + (" (log scale)" if log else "")
    draw.text(((x0 + x1) / 2, y1 + 30), x_label, fill="black", font=normal, anchor="mt")
    draw.text((x0, oy + 8), panel.y_label, fill="black", font=normal, anchor="lt")
    points = [px(pos, y) for pos, y in zip(positions, panel.ys, strict=True)]
    if not categorical and len(points) > 1:
        draw.line(points, fill=_LINE, width=2)
    for i, (x, y) in enumerate(points):
        if panel.low is not None and panel.high is not None:
            _, ya = px(0, panel.low[i])
            _, yb = px(0, panel.high[i])
            draw.line([x, ya, x, yb], fill=_LINE, width=1)
            draw.line([x - 4, ya, x + 4, ya], fill=_LINE)
            draw.line([x - 4, yb, x + 4, yb], fill=_LINE)
        draw.ellipse([x - 4, y - 4, x + 4, y + 4], fill=_LINE)
        draw.text((x + 6, y - 3), panel.value_format.format(panel.ys[i]), fill=(60, 60, 60),
                  font=small, anchor="lb")


def plot_panels(path: str | Path, title: str, panels: Sequence[Panel]) -> Path:
    """Draw the panels side by side under a title; write and return the PNG path."""
    if not panels:
        raise ValueError("plot_panels needs at least one panel")
    for panel in panels:
        if len(panel.xs) != len(panel.ys) or not panel.xs:
            raise ValueError(f"panel {panel.y_label!r}: need as many ys as xs (>= 1)")
    title_h = 28
    image = Image.new("RGB", (PANEL_WIDTH_PX * len(panels), PANEL_HEIGHT_PX + title_h), "white")
    draw = ImageDraw.Draw(image)
    draw.text((10, 8), title, fill="black", font=font(15))
    for i, panel in enumerate(panels):
        _draw_panel(draw, (i * PANEL_WIDTH_PX, title_h), panel)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path
