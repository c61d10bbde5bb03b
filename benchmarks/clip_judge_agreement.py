"""Is the in-domain CLIP a judge? Its ranking of shapes-world models against the rule-based scorer's.

    .venv/bin/python benchmarks/clip_judge_agreement.py --clip runs/shapes-clip \\
        --model shapes-v10=models/shapes-v10 --model "position pilot=runs/pilot-pos-500-model" \\
        --model "paraphrase training=runs/v11-base/model" \\
        --model "layout prior pilot=runs/v11-pilotprior" \\
        --model "+ layout prior=runs/v11-prior" --model shapes-v11=models/shapes-v11

Issue 25 asks that the CLIP judge be validated before it judges: where a rule-based scorer exists
(the shapes world), a CLIP trained by `pictor train-clip` on shapes data must rank models of
different quality as the scorer does (Spearman >= 0.8 over at least five). Every model generates
the `validation-shapes` suite (a validation suite: this checks a tool and decides nothing about a
model; the benchmark suites stay unseen), model alone, 4 images per prompt, dpm++2m 20 steps,
guidance 4 (`@GUIDANCE` for another). Each image gets the scorer's verdict and the CLIP's figures
against the suite's distinct
prompts (76): CLIPScore and R-precision (its prompt ranked first among all of them).
Real renders of the same prompts (the shapes renderer, one per image seed) give the CLIP's
ceiling. Spearman's rho is computed over the models (not the renders) for both CLIP figures,
overall and per category. Writes benchmarks/results/<name>.json and a section of
BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, update_markdown_section, write_json  # noqa: E402

NAME = "clip_judge_agreement"
SUITE = "validation-shapes"


def parse_model(text: str) -> tuple[str, Path, float]:
    """NAME=DIR[@GUIDANCE]: a model folder, sampled at a guidance scale (default 4)."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"--model {text!r}: expected NAME=DIR[@GUIDANCE]")
    name, rest = text.split("=", 1)
    guidance = 4.0
    if "@" in rest:
        rest, value = rest.rsplit("@", 1)
        try:
            guidance = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"--model {text!r}: {value!r} is not a guidance "
                                             "scale") from None
    return name, Path(rest), guidance


def clip_figures(judge, images: list, prompts: list[str], unique: list[str],
                 caption_emb: np.ndarray, categories: list[str]) -> dict[str, dict[str, float]]:
    """CLIPScore and R-precision (all distinct prompts as candidates), overall and per category."""
    from pictor.evaluation.clip_metrics import clip_score, r_precision

    emb = judge.embed_pil_images(images)  # (N, E), as the judge's data sets' images are read
    index_of = {c: i for i, c in enumerate(unique)}
    rows = np.array([index_of[p] for p in prompts])
    out: dict[str, dict[str, float]] = {}
    for group in ["overall", *sorted(set(categories))]:
        keep = np.array([group in ("overall", c) for c in categories])
        out[group] = {
            "clip_score": clip_score(emb[keep], caption_emb[rows[keep]]),
            "r_precision": r_precision(emb[keep], rows[keep], caption_emb,
                                       num_candidates=len(unique)).value}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clip", type=Path, required=True, help="a pictor train-clip folder")
    parser.add_argument("--model", type=parse_model, action="append", required=True,
                        help="NAME=DIR[@GUIDANCE] (repeatable; at least five; guidance "
                             "default 4)")
    parser.add_argument("--name", default=NAME,
                        help=f"results/<name>.json and BENCHMARKS.md section (default {NAME})")
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    if len(args.model) < 3:
        raise SystemExit("need at least three models for a rank correlation (the issue: five)")

    from scipy.stats import spearmanr

    from pictor.data.shapes import render_scene, scene_for_prompt
    from pictor.data.suites import get_suite, image_seed
    from pictor.evaluation.benchmark import run_suite
    from pictor.evaluation.clip_eval import ClipJudge
    from pictor.pipeline import load_pipeline

    torch.set_num_threads(args.threads)
    judge = ClipJudge(args.clip)
    items = get_suite(SUITE)
    unique = list(dict.fromkeys(item.prompt for item in items))
    caption_emb = judge.embed_texts(unique)                                # (U, E)
    start = time.perf_counter()

    # the ceiling: real renders of each image's prompt, seeded like the generated images
    renders, render_prompts, render_categories = [], [], []
    for i, item in enumerate(items):
        for j in range(args.images_per_prompt):
            rng = np.random.default_rng(image_seed(SUITE, i, j))
            renders.append(render_scene(scene_for_prompt(item.canonical, rng)))
            render_prompts.append(item.prompt)
            render_categories.append(item.category)
    runs = [{"name": "real renders (ceiling)", "model": None, "rule": None,
             "clip": clip_figures(judge, renders, render_prompts, unique, caption_emb,
                                  render_categories)}]

    for name, folder, guidance in args.model:
        pipe = load_pipeline(folder)
        images: list = []
        report = run_suite(pipe, SUITE, images_per_prompt=args.images_per_prompt, progress=False,
                           guidance_scale=guidance,
                           on_image=lambda generated, _result, out=images: out.append(generated.image))
        categories = [r.category for r in report.results]
        runs.append({"name": name, "model": str(folder), "model_sha256": pipe.model_sha256,
                     "guidance_scale": guidance, "rule": report.scores,
                     "clip": clip_figures(judge, images, report.prompts, unique, caption_emb,
                                          categories)})
        print(name, f"rule {report.scores['overall']:.3f}",
              f"R-precision {runs[-1]['clip']['overall']['r_precision']:.3f}",
              f"CLIPScore {runs[-1]['clip']['overall']['clip_score']:.2f}", flush=True)

    models = runs[1:]
    agreement: dict[str, dict[str, float]] = {}
    for group in models[0]["clip"]:
        rule = [m["rule"][group] for m in models]
        agreement[group] = {}
        for figure in ("r_precision", "clip_score"):
            rho = spearmanr(rule, [m["clip"][group][figure] for m in models]).statistic
            agreement[group][figure] = None if np.isnan(rho) else float(rho)
    seconds = time.perf_counter() - start
    write_json(args.name, {"suite": SUITE, "images_per_prompt": args.images_per_prompt,
                      "clip": str(args.clip), "clip_sha256": judge.sha256, "runs": runs,
                      "spearman": agreement, "seconds": seconds, "environment": environment()})

    rows = [[r["name"], "-" if r["rule"] is None else f"{r['rule']['overall']:.3f}",
             f"{r['clip']['overall']['r_precision']:.3f}", f"{r['clip']['overall']['clip_score']:.2f}"]
            for r in runs]
    per_category = [[g, *("-" if v is None else f"{v:.2f}" for v in (a["r_precision"], a["clip_score"]))]
                    for g, a in agreement.items()]
    body = (f"The CLIP judge (`{args.clip}`, sha256 {judge.sha256[:12]}) against the rule-based "
            f"scorer on `{SUITE}`, model alone, {args.images_per_prompt} images per prompt, "
            "dpm++2m 20 steps, guidance 4 unless the name says otherwise; R-precision ranks each image's prompt among all "
            f"{len(unique)} distinct prompts (chance {1 / len(unique):.3f}). Written by "
            "`benchmarks/clip_judge_agreement.py` (the command is in docs/clip.md).\n\n"
            + markdown_table(["images of", "rule-based scorer", "CLIP R-precision", "CLIPScore"],
                             rows)
            + f"\n\nSpearman's rho between the scorer and the CLIP over the {len(models)} models:\n\n"
            + markdown_table(["category", "R-precision", "CLIPScore"], per_category))
    update_markdown_section(args.name, body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
