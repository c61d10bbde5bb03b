"""Shared helpers for the benchmark scripts.

Every script measures something, keeps the median of several runs (the machine may be shared, so
single timings are noisy), writes the raw numbers to benchmarks/results/<name>.json and puts a
Markdown table between the markers `<!-- name -->` and `<!-- /name -->` in BENCHMARKS.md (the
section is appended when the markers are missing; the rest of the file is left alone).
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
RESULTS_DIR = ROOT / "benchmarks" / "results"
BENCHMARKS_MD = ROOT / "BENCHMARKS.md"


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values))


def time_runs(fn: Callable[[], Any], num_runs: int, calls_per_run: int = 1,
              warmup_calls: int = 1) -> list[float]:
    """Seconds per call of `fn`, one number per run (each run averages calls_per_run calls)."""
    for _ in range(warmup_calls):
        fn()
    seconds = []
    for _ in range(num_runs):
        start = time.perf_counter()
        for _ in range(calls_per_run):
            fn()
        seconds.append((time.perf_counter() - start) / calls_per_run)
    return seconds


def environment() -> dict[str, Any]:
    """What the numbers depend on: library versions, threads, CPU, load at measurement time."""
    import torch

    from pictor.hardware import cpu_name

    cpu = cpu_name()
    return {
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
    }


def write_json(name: str, data: dict[str, Any]) -> Path:
    """Write benchmarks/results/<name>.json (pretty, sorted keys) and return its path."""
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    return path


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def update_markdown_section(name: str, body: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace the text between `<!-- name -->` and `<!-- /name -->` in `path` with body."""
    start, end = f"<!-- {name} -->", f"<!-- /{name} -->"
    block = f"{start}\n{body.strip()}\n{end}"
    text = path.read_text() if path.exists() else "# Benchmarks\n"
    if start in text and end in text:
        before, rest = text.split(start, 1)
        after = rest.split(end, 1)[1]
        text = before + block + after
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)
