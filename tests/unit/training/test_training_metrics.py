"""Metrics log: JSONL records, truncation on resume, a loss-curve PNG."""

from __future__ import annotations

import json

from PIL import Image

from pictor.training.metrics import MetricsLogger, plot_metrics_file, read_metrics


def test_log_resume_truncates_and_plot(tmp_path):
    log = MetricsLogger(tmp_path, tensorboard=False)
    for step in range(1, 21):
        log.log(step, loss=1.0 / step, lr=1e-3)
    log.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 21, "lo')  # torn line of a killed run
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == list(range(1, 21))

    # resuming from a checkpoint at step 12 drops the records of the lost tail
    log = MetricsLogger(tmp_path, resume_step=12, tensorboard=False)
    log.log(13, loss=float("nan"))
    log.close()
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 14))
    assert records[-1]["loss"] == "nan"
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["lr"] == 1e-3

    png = plot_metrics_file(tmp_path / "metrics.jsonl", tmp_path / "loss_curve.png")
    with Image.open(png) as im:
        assert im.size == (640, 400)
        # the smoothed curve is drawn in blue somewhere inside the axes
        colors = im.convert("RGB").getcolors(maxcolors=1 << 16)
        assert any(rgb == (30, 90, 220) for _, rgb in colors)
