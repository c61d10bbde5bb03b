"""`pictor data ...`: make and inspect data sets.

  pictor data synth --num-images N --out DIR [--seed S] [--mix colors=2,position=1] [--workers K]
  pictor data suites [--name geneval-shapes] [--export FILE]

Each subcommand is a few lines over the library (`pictor.data.synth`, `pictor.data.suites`);
further subcommands (e.g. `prepare`) add an `_add_<name>(subcommands)` function below.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="make and inspect data sets")
    subcommands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_synth(subcommands)
    _add_suites(subcommands)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


# ---------------------------------------------------------------------------------------------
# synth
# ---------------------------------------------------------------------------------------------
def _add_synth(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "synth",
        help="render a shapes-world training set (PNGs + metadata.jsonl)",
        description="Render shapes-world training images with true captions. Uses the 'train' "
        "seed namespace only: evaluation suites are never reproduced (see pictor.data.synth).",
    )
    parser.add_argument("--num-images", type=int, required=True, help="images to render")
    parser.add_argument("--out", required=True, help="output folder (must not hold a data set)")
    parser.add_argument("--seed", type=int, default=0, help="run seed in [0, 2**31) (default 0)")
    parser.add_argument(
        "--mix",
        default=None,
        help="category weights, e.g. single_object=1,colors=2 (default: all six equally)",
    )
    parser.add_argument(
        "--workers", type=int, default=None, help="worker processes (default: all CPUs)"
    )
    parser.add_argument("--overwrite", action="store_true", help="rewrite an existing data set")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import time

    from pictor.data.shapes import parse_mix
    from pictor.data.synth import synthesize

    try:
        mix = parse_mix(args.mix) if args.mix else None
        start = time.perf_counter()
        config = synthesize(
            args.out,
            args.num_images,
            seed=args.seed,
            mix=mix,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
        )
    except ValueError as error:
        print(f"pictor data synth: {error}", file=sys.stderr)
        return 2
    elapsed_seconds = time.perf_counter() - start
    shares = ", ".join(f"{c}={w:.3g}" for c, w in config.mix.items())
    print(f"wrote {config.num_images} images to {args.out} in {elapsed_seconds:.1f} s ({shares})")
    return 0


# ---------------------------------------------------------------------------------------------
# suites
# ---------------------------------------------------------------------------------------------
def _add_suites(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "suites", help="list the prompt suites, print or export one as JSONL"
    )
    parser.add_argument("--name", default=None, help="suite to print or export")
    parser.add_argument("--export", default=None, metavar="FILE", help="write the suite as JSONL")
    parser.set_defaults(func=_run_suites)


def _run_suites(args: argparse.Namespace) -> int:
    import json

    from pictor.data.suites import DEFAULT_SUITE, SUITES, export_suite, suite_records

    name = args.name or (DEFAULT_SUITE if args.export else None)
    try:
        if name is None:
            for spec in SUITES.values():
                print(
                    f"{spec.name} v{spec.version}: {spec.prompts_per_category} prompts per "
                    f"category, namespace '{spec.namespace}' ({spec.description})"
                )
            return 0
        if args.export:
            count = export_suite(args.export, name)
            print(f"wrote {count} prompts of {name} to {args.export}")
            return 0
        for record in suite_records(name):
            print(json.dumps(record))
    except ValueError as error:
        print(f"pictor data suites: {error}", file=sys.stderr)
        return 2
    return 0
