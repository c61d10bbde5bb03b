"""Reward and validation curves of a `pictor finetune` run (docs/alignment.md draws them).

    .venv/bin/python benchmarks/reward_curves.py runs/v11-nft -o docs/runs/shapes-v11-reward

Reads the run's metrics.jsonl (the reward of each round's own samples, per category),
validation.jsonl and baseline.json (the validation suites, FD and diversity of every validated
checkpoint and of the starting model), copies them into the output folder beside a plot
(`curves.png`: reward in windows of 20 steps, each suite's overall score, and the FD and diversity
ratios against the start with the bounds that reject a checkpoint) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import markdown_table  # noqa: E402

WINDOW = 20  # steps per reward point (10 rounds of 2 steps)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("-o", "--output-dir", type=Path, required=True)
    args = parser.parse_args(argv)

    from pictor.evaluation.plots import Panel, plot_panels

    metrics = [json.loads(line) for line in (args.run / "metrics.jsonl").read_text().splitlines()
               if line.strip()]
    validation = [json.loads(line) for line in
                  (args.run / "validation.jsonl").read_text().splitlines() if line.strip()]
    base = json.loads((args.run / "baseline.json").read_text())
    suites = sorted({k.split("/")[1] for k in base if k.endswith("/overall")})

    rewards = [(m["step"], m["reward"]) for m in metrics if "reward" in m]
    windows: dict[int, list[float]] = {}
    for step, r in rewards:
        windows.setdefault((step - 1) // WINDOW, []).append(r)
    last = max(step for step, _ in rewards)
    xs = [f"{w * WINDOW + 1}-{min((w + 1) * WINDOW, last)}" for w in sorted(windows)]
    panels = [Panel("steps", "reward (own samples)", xs,
                    [sum(v) / len(v) for _, v in sorted(windows.items())], y_range=(0, 1))]
    steps = [0] + [v["step"] for v in validation]
    for suite in suites:
        key = f"val/{suite}/overall"
        panels.append(Panel("step", f"{suite} overall", steps,
                            [base[key]] + [v["scores"][key] for v in validation], y_range=(0, 1)))
    for suite in suites[:1]:
        fd = f"val/{suite}/fd"
        div = f"val/{suite}/diversity_ratio"
        panels.append(Panel("step", f"FD / start ({suite}; bound 1.25)", steps,
                            [1.0] + [v["scores"][fd] / base[fd] for v in validation],
                            value_format="{:.2f}"))
        panels.append(Panel("step", f"diversity / start ({suite}; bound 0.9)", steps,
                            [1.0] + [v["scores"][div] / base[div] for v in validation],
                            value_format="{:.2f}"))
    args.output_dir.mkdir(parents=True, exist_ok=True)
    for name in ("metrics.jsonl", "validation.jsonl", "baseline.json", "config.yaml"):
        if (args.run / name).is_file():
            shutil.copy2(args.run / name, args.output_dir / name)
    selection = args.run / "final" / "selection.json"
    if selection.is_file():
        shutil.copy2(selection, args.output_dir / "selection.json")
    plot_panels(args.output_dir / "curves.png", f"pictor finetune: {args.run}", panels)

    header = ["step", *[f"{s} overall" for s in suites], "FD ratio", "diversity ratio",
              "accepted"]
    rows = [["0 (start)", *[f"{base[f'val/{s}/overall']:.3f}" for s in suites], "1.00", "1.00",
             "-"]]
    for v in validation:
        sc = v["scores"]
        s0 = suites[0]
        rows.append([v["step"], *[f"{sc[f'val/{s}/overall']:.3f}" for s in suites],
                     f"{sc[f'val/{s0}/fd'] / base[f'val/{s0}/fd']:.2f}",
                     f"{sc[f'val/{s0}/diversity_ratio'] / base[f'val/{s0}/diversity_ratio']:.2f}",
                     "yes" if v["accepted"] else f"no: {v['why']}"])
    print(markdown_table(header, rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
