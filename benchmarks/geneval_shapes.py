"""Score a model on the `geneval-shapes` suite (GenEval on the shapes world).

    .venv/bin/python benchmarks/geneval_shapes.py --model models/shapes-v10

Generates `--images-per-prompt` images for every prompt of the suite (20-step DPM-Solver++ and
the default guidance unless told otherwise), scores them with the project scorer and writes
benchmarks/results/geneval_shapes.json, the per-image verdicts beside the model
(`<model>/eval/geneval_shapes.json`) and a table section in BENCHMARKS.md.

The score is that of `pictor generate`'s defaults, layout guidance included (pictor.guidance;
it acts on prompts with a relation or a count word). The same images without it (`--layout off`, the model
alone) are scored too and shown beside it; `--no-compare-layout` skips them.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    environment,
    markdown_table,
    update_markdown_section,
    write_json,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/shapes-v10"))
    parser.add_argument("--suite", default="geneval-shapes")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compare-layout", action="store_true",
                        help="do not also score the model without layout guidance")
    args = parser.parse_args(argv)

    import torch

    from pictor.evaluation.benchmark import run_suite
    from pictor.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    pipeline = load_pipeline(args.model)
    report = run_suite(pipeline, args.suite, images_per_prompt=args.images_per_prompt,
                       num_steps=args.steps, sampler=args.sampler,
                       guidance_scale=args.guidance)
    alone = None if args.no_compare_layout else run_suite(
        pipeline, args.suite, images_per_prompt=args.images_per_prompt, num_steps=args.steps,
        sampler=args.sampler, guidance_scale=args.guidance, layout=False)
    data = {"model": str(args.model), "model_sha256": pipeline.model_sha256,
            "environment": environment(), **report.to_dict()}
    if alone is not None:
        data["without_layout_guidance"] = {"scores": alone.scores,
                                           "intervals_95": alone.to_dict()["intervals_95"]}
    images = data.pop("images")
    write_json("geneval_shapes", data)
    eval_dir = args.model / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "geneval_shapes.json").write_text(
        json.dumps({**data, "images": images}, indent=2) + "\n")

    rows = []
    for category, score in report.scores.items():
        lo, hi = report.intervals.get(category, (None, None))
        ci = f"{lo:.2f}-{hi:.2f}" if lo is not None else "-"
        rows.append([category, f"{score:.3f}", ci]
                    + ([] if alone is None else [f"{alone.scores[category]:.3f}"]))
    s = report.settings
    body = (
        f"`{args.suite}` score of `{args.model}` (sha256 {data['model_sha256'][:12]}...): "
        f"{s['images_per_prompt']} images per prompt, {s['sampler']} {s['num_steps']} steps, "
        f"guidance {s['guidance_scale']}, {report.seconds_per_image:.3f} s/image. Targets "
        "(issue 5): overall >= 0.90, every category >= 0.80. Written by "
        f"`benchmarks/geneval_shapes.py` ({data['environment']['date_utc']}). The score is "
        "with layout guidance (the default; it changes `position` and `counting` prompts "
        "only)"
        + ("" if alone is None else "; the last column is the model alone, `--layout off`")
        + ".\n\n"
        + markdown_table(["category", "score", "95% interval"]
                         + ([] if alone is None else ["without layout guidance"]), rows)
    )
    update_markdown_section("geneval_shapes", body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
