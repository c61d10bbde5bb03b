"""`pictor eval` and `pictor train-features`: thin wrappers over pictor.evaluation.

    pictor eval [--model DIR] [--suite geneval-shapes] [--images-per-prompt 4]
                [--sampler dpm++2m] [--steps 20] [--guidance 4]
                [--sweep steps=5,10,20,50] [--sweep guidance=1,3,5,8]
                [--sweep sampler=ddim,dpm++2m,euler,ddpm] [--compare DIR2 [DIR3 ...]]
                [--features shapes|DIR|inception:PATH|none] -o REPORT_DIR
    pictor train-features [-o models/shapes-features] [--steps 2000]

`pictor eval` writes REPORT_DIR/report.json, report.md and a self-contained report.html (plus
the PNG grids and plots they show); see pictor.evaluation.report. The model folder defaults to
$PICTOR_MODEL, else the shipped default model. Errors in the user's input exit with 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pictor.cli.generate import add_model_argument


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="Score a model on a prompt suite; write JSON, Markdown and HTML reports.",
        description="Generate the suite's prompts, judge every image, and report per-category "
                    "scores with 95% intervals, sample grids, distribution metrics against "
                    "held-out renders (with their real-vs-real floor), sweeps and comparisons.")
    add_model_argument(p)
    p.add_argument("--suite", default="geneval-shapes",
                   help="prompt suite (`pictor data suites` lists them): geneval-shapes "
                        "(default; reports), geneval-shapes-para, validation-shapes (decides), "
                        "validation-shapes-para, geneval-shapes-v1")
    p.add_argument("--images-per-prompt", type=int, default=4,
                   help="images per prompt (default 4; diversity needs >= 2)")
    p.add_argument("--sampler", default=None,
                   help="sampler name (default dpm++2m; diffusion models only)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default 20; diffusion models only)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default 4)")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2,...",
                   help="vary one setting (steps, guidance, sampler or layout=on,off), the "
                        "others at their base values; repeatable, e.g. --sweep steps=5,10,20,50")
    p.add_argument("--layout", choices=("on", "off"), default="off",
                   help="layout guidance for prompts that state a spatial relation or a count "
                        "(default off: the model alone; on: add the rule)")
    p.add_argument("--compare", nargs="+", action="extend", default=[], metavar="DIR",
                   help="further model folders to compare at the base settings, of any family "
                        "(diffusion, GAN, VAE: the config's model.family says which; a GAN or "
                        "VAE draws in one pass, the sampling settings apply to diffusion only)")
    p.add_argument("--features", default="shapes",
                   help="feature extractor of the distribution metrics: 'shapes' (shipped, "
                        "default), a folder of `pictor train-features`, 'inception:PATH' to a "
                        "local TorchScript Inception, 'clip:DIR' for a CLIP of `pictor "
                        "train-clip`, or 'none' to skip the metrics")
    p.add_argument("--seed", type=int, default=0,
                   help="base seed; image j of prompt i uses seed + the suite's image seed "
                        "offset + 1000 i + j (default 0)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("-o", "--output-dir", type=Path, required=True,
                   help="report folder to write (created if missing)")
    p.set_defaults(func=run_eval)

    p = subparsers.add_parser(
        "train-features", help="Train the shapes feature extractor of the distribution metrics.",
        description="Train the small shapes CNN whose embedding `pictor eval` uses for FD, KID, "
                    "precision/recall and diversity; writes its weights, README (held-out "
                    "accuracy) and training summary to the output folder.")
    p.add_argument("-o", "--output-dir", type=Path, default=None,
                   help="output folder (default: the repository's models/shapes-features)")
    p.add_argument("--steps", type=int, default=None, help="optimiser steps (default 2000)")
    p.add_argument("--batch-size", type=int, default=None, help="images per step (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train_features)


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from pictor.cli.generate import family_options, load_for_sampling, resolve_model_dir
    from pictor.evaluation.evaluate import SamplingSettings, evaluate, load_pipelines, parse_sweep
    from pictor.evaluation.features import load_feature_extractor
    from pictor.evaluation.report import write_report

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        from pictor.pipeline import DEFAULT_NUM_STEPS, DEFAULT_SAMPLER

        if args.steps is not None and args.steps < 1:
            raise ValueError(f"--steps must be >= 1, got {args.steps}")
        sweeps = dict(parse_sweep(text) for text in args.sweep)
        features = None if args.features == "none" else load_feature_extractor(args.features)
        pipe, guidance = load_for_sampling(args)
        if getattr(pipe, "family", "diffusion") != "diffusion":  # GAN, VAE: no sampling options
            pipe.check_options(family_options(args))
        pipelines = [pipe] + load_pipelines([resolve_model_dir(d) for d in args.compare])
        evaluation = evaluate(
            pipelines, suite=args.suite, images_per_prompt=args.images_per_prompt,
            settings=SamplingSettings(args.steps or DEFAULT_NUM_STEPS,
                                      args.sampler or DEFAULT_SAMPLER, guidance,
                                      layout=args.layout == "on"),
            sweeps=sweeps,
            features=features, base_seed=args.seed, progress=not args.quiet)
    except ValueError as err:
        return _error(str(err))
    paths = write_report(evaluation, args.output_dir)
    run = evaluation.models[0].run
    lo, hi = run.overall_interval
    print(f"{evaluation.models[0].name}: overall {run.report.scores['overall']:.3f} "
          f"(95% {lo:.3f}-{hi:.3f}), {run.report.seconds_per_image:.3f} s/image, "
          f"{evaluation.elapsed_seconds:.0f} s in all")
    for path in paths.values():
        print(path)
    return 0


def run_train_features(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from pictor.evaluation.feature_training import FeatureTrainConfig, train_feature_extractor
    from pictor.evaluation.features import default_features_dir

    config = FeatureTrainConfig()
    overrides = {"num_steps": args.steps, "batch_size": args.batch_size,
                 "num_threads": args.threads}
    config = replace(config, **{k: v for k, v in overrides.items() if v is not None})
    out = args.output_dir or default_features_dir()
    try:
        summary = train_feature_extractor(out, config, progress=not args.quiet)
    except ValueError as err:
        return _error(str(err))
    clean = summary["heldout_accuracy"]["clean"]
    print(f"wrote {out}: {summary['size_bytes'] / 1e6:.2f} MB, trained in "
          f"{summary['train_seconds']:.0f} s; held-out (clean) count {clean['count']:.3f}, "
          f"pairs exact {clean['pairs_exact']:.3f}")
    return 0
