"""The alignment ablation of docs/alignment.md: models and stages side by side on the validation suites.

    .venv/bin/python benchmarks/alignment_ablation.py \\
        --model shapes-v10=models/shapes-v10 \\
        --model "paraphrase training=runs/v11-base/model@0" \\
        --model "+ layout prior=runs/v11-prior" \\
        --model "+ reward fine-tuning=runs/v11-nft/final"

Each `--model NAME=DIR[@STRENGTH]` is scored on `validation-shapes` and `validation-shapes-para`
(the suites that decide; never a benchmark suite), the model alone (layout guidance off),
4 images per prompt, dpm++2m 20 steps, guidance 4: the issue's acceptance settings. `@STRENGTH`
sets the strength of the model's learned layout prior for this run (0 turns it off), so one folder
gives the U-Net alone and the U-Net with its prior. Writes benchmarks/results/alignment_ablation.json
and a section of BENCHMARKS.md (`--name` for another); `--also-layout` adds the same suites with layout guidance on
(the decision of item 4: keep it on by default only if it helps on the paraphrase suite).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, update_markdown_section, write_json  # noqa: E402

NAME = "alignment_ablation"
SUITES = ("validation-shapes", "validation-shapes-para")
CATEGORIES = ("single_object", "colors", "two_object", "color_attr", "counting", "position")


def parse_model(text: str) -> tuple[str, Path, float | None]:
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=DIR[@STRENGTH]")
    name, rest = text.split("=", 1)
    strength = None
    if "@" in rest:
        rest, value = rest.rsplit("@", 1)
        strength = float(value)
    return name, Path(rest), strength


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=parse_model, action="append", required=True,
                        help="NAME=DIR[@STRENGTH] (repeatable)")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--also-layout", action="store_true",
                        help="also score with layout guidance on")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--name", default=NAME,
                        help=f"results/<name>.json and BENCHMARKS.md section (default {NAME})")
    args = parser.parse_args(argv)

    import torch

    from pictor.evaluation.benchmark import run_suite
    from pictor.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    rows, data = [], []
    start = time.perf_counter()
    for name, folder, strength in args.model:
        pipe = load_pipeline(folder)
        if strength is not None:
            if pipe.unet.layout_prior is None:
                raise SystemExit(f"{folder}: no layout prior to set the strength of")
            pipe.unet.layout_prior.strength = strength
            pipe.set_compute_dtype(pipe.compute_dtype)  # drop traced graphs made before
        for layout in (False, True) if args.also_layout else (False,):
            for suite in SUITES:
                report = run_suite(pipe, suite, images_per_prompt=args.images_per_prompt,
                                   layout=layout, progress=False)
                outcomes = report.outcomes_by_category()
                counts = {c: sum(outcomes[c]) for c in CATEGORIES}
                total = {c: len(outcomes[c]) for c in CATEGORIES}
                data.append({"name": name, "model": str(folder), "model_sha256": pipe.model_sha256,
                             "layout_prior_strength": strength, "layout_guidance": layout,
                             "suite": suite, "passes": counts, "images": total,
                             "scores": report.scores, "intervals_95": report.to_dict()["intervals_95"]})
                rows.append([name + (" + layout guidance" if layout else ""), suite]
                            + [f"{counts[c]}/{total[c]}" for c in CATEGORIES]
                            + [f"{report.scores['overall']:.3f}"])
                print(" | ".join(rows[-1]), flush=True)
    seconds = time.perf_counter() - start
    write_json(args.name, {"runs": data, "images_per_prompt": args.images_per_prompt,
                      "seconds": seconds, "environment": environment()})
    body = ("Validation suites (they decide), model alone unless marked, "
            f"{args.images_per_prompt} images per prompt, dpm++2m 20 steps, guidance 4. "
            "Passes per category (16 prompts x 4 images). Written by "
            "`benchmarks/alignment_ablation.py` (the command is in docs/alignment.md).\n\n"
            + markdown_table(["model", "suite", *CATEGORIES, "overall"], rows))
    update_markdown_section(args.name, body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
