"""Score a model on a shapes benchmark suite (GenEval on the shapes world).

    .venv/bin/python benchmarks/geneval_shapes.py --model models/shapes-v11
    .venv/bin/python benchmarks/geneval_shapes.py --model models/shapes-v11 --suite geneval-shapes-para

Generates `--images-per-prompt` images for every prompt of the suite (20-step DPM-Solver++ and
the default guidance unless told otherwise), scores them with the project scorer against each
prompt's canonical form and writes benchmarks/results/<suite>.json, the per-image verdicts
beside the model (`<model>/eval/<suite>.json`) and a table section in BENCHMARKS.md.

The headline is the model alone (`--layout off`: the network and its learned parts, no rule that
parses the prompt). The same images with layout guidance (pictor.guidance, a regex over relation
and count words) are scored too and shown apart; `--no-compare-layout` skips them. Run it once
per shipped candidate, after the candidate was chosen on the validation suites.
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


def overall_interval(report) -> tuple[float, float]:
    """95% interval of the overall score (the plain mean of the category pass rates)."""
    from pictor.evaluation.evaluate import mean_rate_interval

    return mean_rate_interval(report.outcomes_by_category())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=Path("models/shapes-v11"))
    parser.add_argument("--suite", default="geneval-shapes")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--sampler", default="dpm++2m")
    parser.add_argument("--guidance", type=float, default=4.0)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-compare-layout", action="store_true",
                        help="do not also score the images with layout guidance")
    args = parser.parse_args(argv)

    import torch

    from pictor.evaluation.benchmark import run_suite
    from pictor.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    pipeline = load_pipeline(args.model)
    settings = dict(images_per_prompt=args.images_per_prompt, num_steps=args.steps,
                    sampler=args.sampler, guidance_scale=args.guidance)
    report = run_suite(pipeline, args.suite, layout=False, **settings)
    report.intervals["overall"] = overall_interval(report)
    ruled = None if args.no_compare_layout else run_suite(pipeline, args.suite, layout=True,
                                                          **settings)
    data = {"model": str(args.model), "model_sha256": pipeline.model_sha256,
            "environment": environment(), **report.to_dict()}
    if ruled is not None:
        data["with_layout_guidance"] = {"scores": ruled.scores,
                                        "intervals_95": ruled.to_dict()["intervals_95"]}
    images = data.pop("images")
    name = args.suite.replace("-", "_")
    write_json(name, data)
    eval_dir = args.model / "eval"
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / f"{name}.json").write_text(json.dumps({**data, "images": images}, indent=2) + "\n")

    rows = []
    for category, score in report.scores.items():
        lo, hi = report.intervals.get(category, (None, None))
        ci = f"{lo:.2f}-{hi:.2f}" if lo is not None else "-"
        rows.append([category, f"{score:.3f}", ci]
                    + ([] if ruled is None else [f"{ruled.scores[category]:.3f}"]))
    s = report.settings
    body = (
        f"`{args.suite}` score of `{args.model}` (sha256 {data['model_sha256'][:12]}...), the "
        f"model alone: {s['images_per_prompt']} images per prompt, {s['sampler']} "
        f"{s['num_steps']} steps, guidance {s['guidance_scale']}, "
        f"{report.seconds_per_image:.3f} s/image on {data['environment'].get('cpu', 'this CPU')} "
        f"({s.get('compute_dtype', '')}). Written by `benchmarks/geneval_shapes.py --suite "
        f"{args.suite}` ({data['environment']['date_utc']}); intervals are 95% Wilson intervals"
        f" of each pass rate and the Price-Bonett interval of their mean"
        + ("" if ruled is None else "; the last column adds layout guidance (a rule that "
           "parses relations and counts, reported apart)")
        + ".\n\n"
        + markdown_table(["category", "model alone", "95% interval"]
                         + ([] if ruled is None else ["with layout guidance"]), rows)
    )
    update_markdown_section(name, body)
    print(body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
