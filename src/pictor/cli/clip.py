"""`pictor train-clip` and `pictor eval-clip`: thin wrappers over the in-domain CLIP judge.

    pictor train-clip --data DIR -o OUT [--config configs/clip.yaml] [--section.key=value ...]
    pictor eval-clip --clip CLIPDIR --data DIR [--generated DIR] [--train DIR] [-o REPORT_DIR]

eval-clip scores images that already exist (real held-out images, and images any model
generated from their captions) instead of generating them itself as `pictor eval` does for the
shapes suites: the judge is validated on real images alone before it judges, and it judges any
generator's output the same way. Errors in the user's input exit with 2.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pictor.cli.eval import _error


def register(subparsers: argparse._SubParsersAction) -> None:
    from pictor.cli.train import _OverridesParser

    p = subparsers.add_parser(
        "train-clip", help="Train the in-domain CLIP judge on a captioned data set.",
        description="Train an image CNN and a projection over the frozen text encoder "
                    "contrastively (CLIP's symmetric InfoNCE) on a data set's images and "
                    "captions; writes clip.safetensors, config.yaml, metrics.jsonl and "
                    "training_summary.json to OUT.",
        epilog="Config overrides: --section.key=value, e.g. --training.epochs=5 "
               "--model.embed_dim=128 --optimizer.lr=1e-3.")
    p.__class__ = _OverridesParser  # same parser, plus the --a.b=value overrides
    p.add_argument("--data", type=Path, required=True,
                   help="training data: shards of `pictor data prepare` or an imagefolder")
    p.add_argument("-o", "--output-dir", type=Path, required=True, help="CLIP folder to write")
    p.add_argument("--config", type=Path, default=None,
                   help="YAML config (default: the built-in defaults, as configs/clip.yaml)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run_train_clip)

    p = subparsers.add_parser(
        "eval-clip", help="Judge real and generated images with a trained CLIP.",
        description="CLIPScore, R-precision, hard-negative accuracy, FD/KID on CLIP features "
                    "(with the real-vs-real floor) and memorisation, per group of the real set "
                    "(its 'split' field) and overall; real images give the ceiling of each "
                    "figure beside the generated images'.")
    p.add_argument("--clip", type=Path, required=True, help="folder of `pictor train-clip`")
    p.add_argument("--data", type=Path, required=True,
                   help="real held-out images with their captions (shards or imagefolder)")
    p.add_argument("--generated", type=Path, default=None,
                   help="generated images: an imagefolder, or PNGs of `pictor generate` "
                        "(captioned by their provenance records); each caption one of --data's")
    p.add_argument("--train", type=Path, default=None,
                   help="the training images, for memorisation and skin-tone hard negatives")
    p.add_argument("--group-by", default="split", help="record field to group by (split)")
    p.add_argument("--seed", type=int, default=0, help="seed of R-precision draws and halves")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("-o", "--output-dir", type=Path, default=None,
                   help="write report.json and report.md here")
    p.add_argument("--grid", type=int, default=0, metavar="N",
                   help="also write grid.png to --output-dir: N captions per group, the real "
                        "image beside the generated one (needs --generated)")
    p.set_defaults(func=run_eval_clip)


def run_train_clip(args: argparse.Namespace) -> int:
    from pictor.config import load_config
    from pictor.evaluation.clip_training import ClipTrainConfig, train_clip

    if not args.data.is_dir():
        return _error(f"--data {str(args.data)!r} is not a folder")
    overrides = [*args.overrides, f"--data.path={args.data}",
                 f"--training.output_dir={args.output_dir}"]
    if args.quiet:
        overrides.append("--training.progress_bar=false")
    try:
        config = load_config(args.config, ClipTrainConfig, overrides)
        summary = train_clip(config)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    fit = summary["fit_r_precision"]
    print(f"wrote {args.output_dir}: {summary['steps']} steps in {summary['train_seconds']:.0f} s"
          f", loss {summary['final_loss_ema']:.4f}, training-set R-precision {fit['value']:.3f}"
          f" (chance {fit['chance']:.3f})")
    return 0


def run_eval_clip(args: argparse.Namespace) -> int:
    import torch

    from pictor.evaluation.clip_eval import evaluate_clip_sets, load_clip, report_markdown

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.grid < 0:
        return _error(f"--grid {args.grid}: give a number of captions per group >= 0")
    if args.grid and (args.generated is None or args.output_dir is None):
        return _error("--grid needs --generated and --output-dir")
    try:
        report = evaluate_clip_sets(load_clip(args.clip), args.data, generated=args.generated,
                                    train=args.train, group_by=args.group_by, seed=args.seed)
    except (ValueError, FileNotFoundError) as err:
        return _error(str(err))
    markdown = report_markdown(report)
    print(markdown)
    if args.output_dir is not None:
        args.output_dir.mkdir(parents=True, exist_ok=True)
        (args.output_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.output_dir / "report.md").write_text(markdown)
    if args.grid:
        from pictor.evaluation.clip_eval import comparison_grid

        grid, cells = comparison_grid(args.data, args.generated, per_group=args.grid,
                                      group_by=args.group_by, seed=args.seed)
        grid.save(args.output_dir / "grid.png")
        (args.output_dir / "grid.json").write_text(json.dumps(cells, indent=2) + "\n")
        print(f"wrote {args.output_dir / 'grid.png'}: {len(cells)} captions, real | generated")
    return 0
