"""`pictor data ...`: make and inspect data sets.

  pictor data synth --num-images N --out DIR [--seed S] [--mix colors=2,position=1] [--workers K]
                    [--format imagefolder|shards] [--captions canonical|paraphrase|mix]
                    [--canonical-share 0.3]
  pictor data prepare INPUT -o OUT [--engine local|spark] [--master URL] [--image-size 64]
                    [--resize center-crop|pad] [--text-encoder minilm|PATH|none]
                    [--with-embeddings] [--autoencoder PATH] [--allow-outside-root]
                    [--record-timeout-seconds S] [--max-record-memory-bytes B]
  pictor data suites [--name geneval-shapes] [--export FILE]
  pictor data fetch-emoji -o DIR [--package NAME] [--from TGZ]
  pictor data import emoji SOURCE... -o DIR [--seed 0] [--background 255,255,255]

Each subcommand is a few lines over the library (`pictor.data.synth`, `pictor.data.engine`,
`pictor.data.suites`); a further subcommand adds an `_add_<name>(subcommands)` function below.
"""

from __future__ import annotations

import argparse
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("data", help="make and inspect data sets")
    subcommands = parser.add_subparsers(dest="data_command", metavar="SUBCOMMAND")
    _add_synth(subcommands)
    _add_prepare(subcommands)
    _add_suites(subcommands)
    _add_fetch_emoji(subcommands)
    _add_import(subcommands)
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
    parser.add_argument("--format", choices=("imagefolder", "shards"), default="imagefolder",
                        help="imagefolder: PNGs + metadata.jsonl (default); shards: Parquet "
                        "shards + manifest.json, as `pictor data prepare` writes")
    parser.add_argument("--captions", choices=("canonical", "paraphrase", "mix"),
                        default="mix",
                        help="canonical: the canonical grammar; paraphrase: everyday training "
                        "phrasings of it (docs/captions.md); mix (default, what shapes-v11 was "
                        "trained on): both, see --canonical-share. The images do not depend on it")
    parser.add_argument("--canonical-share", type=float, default=None,
                        help="with --captions mix: share of canonical captions (default 0.3)")
    parser.add_argument("--overwrite", action="store_true", help="rewrite an existing data set")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_synth)


def _run_synth(args: argparse.Namespace) -> int:
    import time

    from pictor.data.captions import DEFAULT_CANONICAL_SHARE
    from pictor.data.shapes import parse_mix
    from pictor.data.synth import synthesize

    try:
        mix = parse_mix(args.mix) if args.mix else None
        if args.canonical_share is not None and args.captions != "mix":
            raise ValueError("--canonical-share applies to --captions mix only")
        share = DEFAULT_CANONICAL_SHARE if args.canonical_share is None else args.canonical_share
        start = time.perf_counter()
        config = synthesize(
            args.out,
            args.num_images,
            seed=args.seed,
            mix=mix,
            workers=args.workers,
            overwrite=args.overwrite,
            progress=not args.quiet,
            format=args.format,
            captions=args.captions,
            canonical_share=share,
        )
    except ValueError as error:
        print(f"pictor data synth: {error}", file=sys.stderr)
        return 2
    elapsed_seconds = time.perf_counter() - start
    shares = ", ".join(f"{c}={w:.3g}" for c, w in config.mix.items())
    print(f"wrote {config.num_images} images to {args.out} ({args.format}, {args.captions} "
          f"captions) in {elapsed_seconds:.1f} s ({shares})")
    return 0


# ---------------------------------------------------------------------------------------------
# prepare
# ---------------------------------------------------------------------------------------------
def _add_prepare(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "prepare",
        help="turn captioned images (folder, manifest, tar shards) into training shards",
        description="Decode, check, resize and de-duplicate captioned images into Parquet "
        "shards + manifest.json (train on them with --data.path=OUT). INPUT is a folder with "
        "metadata.jsonl/csv, a folder of image + same-name .txt pairs, a .parquet/.jsonl/.csv "
        "manifest of paths, or WebDataset .tar shards. Bad records never stop the job: each "
        "is listed with its reason in OUT/rejects.jsonl. Exits 1 when nothing was written.",
    )
    parser.add_argument("input", metavar="INPUT", help="folder, manifest file or .tar shard(s)")
    parser.add_argument("-o", "--out", required=True, help="output shard folder")
    parser.add_argument("--engine", choices=("local", "spark"), default="local",
                        help="local: a process pool (default); spark: Spark, local[*] or "
                        "--master")
    parser.add_argument("--master", default=None,
                        help="Spark master URL, e.g. spark://host:7077 (default: the "
                        "spark-submit master, else local[*])")
    parser.add_argument("--workers", type=int, default=None,
                        help="local engine processes (default: all CPUs)")
    parser.add_argument("--partitions", type=int, default=None,
                        help="Spark tasks for the transform (default: ~512 records each)")
    parser.add_argument("--image-size", type=int, default=64, help="output side in px (64)")
    parser.add_argument("--resize", choices=("center-crop", "pad"), default="center-crop",
                        help="center-crop (default) or pad: keep the whole image and ratio")
    parser.add_argument("--background", default="255,255,255",
                        help="R,G,B behind transparency and padding (default 255,255,255)")
    parser.add_argument("--max-pixels", type=int, default=2**26,
                        help="largest width*height decoded (default 2**26 = 8192^2)")
    parser.add_argument("--max-file-bytes", type=int, default=64 * 2**20,
                        help="largest source file read, in bytes (default 64 MiB)")
    parser.add_argument("--record-timeout-seconds", type=float, default=60.0,
                        help="longest one record may take; then it is rejected as timeout "
                        "(default 60)")
    parser.add_argument("--max-record-memory-bytes", type=int, default=2 * 2**30,
                        help="memory one record may add to its worker; beyond it the record "
                        "is rejected as out_of_memory (default 2 GiB)")
    parser.add_argument("--allow-outside-root", action="store_true",
                        help="read files outside INPUT's folder (absolute or ../ paths in "
                        "metadata, symlinks pointing out); refused by default")
    parser.add_argument("--formats", default=None,
                        help="comma-separated Pillow formats allowed (default "
                        "JPEG,MPO,PNG,WEBP,GIF,BMP,TIFF)")
    parser.add_argument("--text-encoder", default="minilm",
                        help="encoder whose tokenizer counts caption tokens: minilm "
                        "(default), a local Hugging Face folder, or none (word rule)")
    parser.add_argument("--max-tokens", type=int, default=32,
                        help="caption token budget incl. special tokens; train with the same "
                        "--text.max_length (default 32)")
    parser.add_argument("--with-embeddings", action="store_true",
                        help="also store the text encoder's caption embeddings beside the shards")
    parser.add_argument("--autoencoder", default=None, metavar="PATH",
                        help="also store latents of this autoencoder (pictor train-autoencoder)")
    parser.add_argument("--records-per-shard", type=int, default=10_000,
                        help="records per Parquet shard (default 10000)")
    parser.add_argument("--overwrite", action="store_true", help="replace shards in OUT")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.set_defaults(func=_run_prepare)


def _tokenizer_folder(spec: str) -> str | None:
    """The tokenizer folder of a --text-encoder spec; None for the word rule."""
    if spec == "none":
        return None
    if spec == "minilm":
        from pictor.text.encoders import minilm_path

        return str(minilm_path())
    return spec


def _parse_background(text: str) -> tuple[int, int, int]:
    parts = text.split(",")
    if len(parts) != 3 or not all(p.strip().isdigit() and int(p) <= 255 for p in parts):
        raise ValueError(f"--background must be R,G,B with integers in [0, 255], e.g. "
                         f"255,255,255; got {text!r}")
    return int(parts[0]), int(parts[1]), int(parts[2])


def _run_prepare(args: argparse.Namespace) -> int:
    from pictor.data.engine import prepare_dataset
    from pictor.data.prepare import ALLOWED_FORMATS, PrepareOptions, load_tokenizer
    from pictor.data.records import REASONS
    from pictor.data.shards import REJECTS_FILE

    try:
        background = _parse_background(args.background)
        if args.with_embeddings and args.text_encoder == "none":
            raise ValueError("--with-embeddings needs a text encoder: pass --text-encoder minilm "
                             "or a local Hugging Face folder")
        tokenizer = None
        try:
            tokenizer = _tokenizer_folder(args.text_encoder)
            if tokenizer is not None:
                load_tokenizer(tokenizer)
        except Exception as error:  # any failure means: count tokens by the word rule
            print(f"pictor data prepare: no tokenizer for --text-encoder {args.text_encoder} "
                  f"({error}); counting caption tokens by the word rule", file=sys.stderr)
            tokenizer = None
        options = PrepareOptions(
            image_size=args.image_size, resize=args.resize, background=background,
            max_pixels=args.max_pixels, max_file_bytes=args.max_file_bytes,
            formats=tuple(args.formats.split(",")) if args.formats else ALLOWED_FORMATS,
            max_caption_tokens=args.max_tokens, tokenizer_path=tokenizer,
            record_timeout_seconds=args.record_timeout_seconds,
            max_record_memory_bytes=args.max_record_memory_bytes)
        manifest = prepare_dataset(
            args.input, args.out, options, engine=args.engine, workers=args.workers,
            master=args.master, partitions=args.partitions,
            records_per_shard=args.records_per_shard, overwrite=args.overwrite,
            progress=not args.quiet, allow_outside_root=args.allow_outside_root)
    except ValueError as error:
        print(f"pictor data prepare: {error}", file=sys.stderr)
        return 2
    counts = manifest.counts
    print(f"read {counts.read}, written {counts.written} in {len(manifest.shards)} shard(s), "
          f"duplicates {counts.duplicates}, skipped {sum(counts.skipped.values())} "
          f"({manifest.created_by['engine']} engine, {manifest.created_by['seconds']:.1f} s)")
    for reason, n in counts.skipped.items():
        print(f"  {reason:20s} {n:8d}  {REASONS[reason]}")
    if counts.captions_cleaned:
        print(f"{counts.captions_cleaned} caption(s) had invisible characters (zero-width, bidi "
              "marks, private use) removed; control characters reject a caption instead")
    if counts.duplicates or counts.skipped:
        print(f"every skipped record is listed in {args.out}/{REJECTS_FILE}")
    if counts.written == 0:
        print("pictor data prepare: nothing was written", file=sys.stderr)
        return 1
    if args.with_embeddings or args.autoencoder:
        _precompute(args)
    return 0


def _precompute(args: argparse.Namespace) -> None:
    """Text embeddings and/or autoencoder latents beside the shards (training reuses them)."""
    from pictor.data.loader import precompute_prepared
    from pictor.networks.codec import build_codec
    from pictor.text.encoders import load_text_encoder, text_encoder_identity

    text_encode = text_identity = image_encode = image_identity = None
    if args.with_embeddings:
        encoder = load_text_encoder(args.text_encoder, args.max_tokens)
        text_encode = encoder.encode
        text_identity = text_encoder_identity(args.text_encoder, args.max_tokens)
    if args.autoencoder:
        codec = build_codec("autoencoder", autoencoder_path=args.autoencoder)
        image_encode, image_identity = codec.encode, codec.identity
    for path in precompute_prepared(args.out, text_encode=text_encode,
                                    text_identity=text_identity, image_encode=image_encode,
                                    image_identity=image_identity):
        print(f"stored {path}")


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
                    f"category, namespace '{spec.namespace}', {spec.captions} prompts, image "
                    f"seeds from {spec.image_seed_offset} ({spec.description})"
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


# ---------------------------------------------------------------------------------------------
# fetch-emoji, import emoji
# ---------------------------------------------------------------------------------------------
def _add_fetch_emoji(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "fetch-emoji", help="fetch the pinned emoji packages with npm pack (sha256 checked)",
        description="Fetch emoji-datasource-google, emoji-datasource-twitter and openmoji at "
        "their pinned versions with `npm pack` into OUT and check each tarball's sha256 "
        "(pictor.data.emoji_packages.PINS). A tarball already in OUT with the right digest is "
        "kept; --from copies tarballs you have instead of fetching them.")
    parser.add_argument("-o", "--out", required=True, help="folder for the .tgz tarballs")
    parser.add_argument("--package", action="append", default=None,
                        help="fetch only this package (repeatable; default: all three)")
    parser.add_argument("--from", dest="from_files", action="append", default=[],
                        metavar="TGZ", help="a pinned tarball you already have (repeatable)")
    parser.set_defaults(func=_run_fetch_emoji)


def _run_fetch_emoji(args: argparse.Namespace) -> int:
    import subprocess
    import time

    from pictor.data.emoji_packages import PINS, copy_pinned, fetch_packages

    start = time.perf_counter()
    try:
        paths = [copy_pinned(path, args.out) for path in args.from_files]
        if not args.from_files or args.package:
            paths += fetch_packages(args.out, args.package or tuple(PINS))
    except (ValueError, subprocess.CalledProcessError) as error:
        print(f"pictor data fetch-emoji: {error}", file=sys.stderr)
        return 2
    for path in paths:
        print(f"{path}  sha256 ok")
    print(f"{len(paths)} tarball(s) in {args.out} ({time.perf_counter() - start:.1f} s)")
    return 0


def _add_import(subcommands: argparse._SubParsersAction) -> None:
    parser = subcommands.add_parser(
        "import", help="turn a collection someone else made into a captioned imagefolder")
    kinds = parser.add_subparsers(dest="import_kind", metavar="KIND")
    emoji = kinds.add_parser(
        "emoji", help="emoji packages (npm tarballs or folders) -> train/ and heldout/",
        description="Import emoji-datasource-google/-twitter and openmoji packages (.tgz from "
        "`pictor data fetch-emoji` or unpacked folders) into OUT/train and OUT/heldout "
        "imagefolders of 64x64 PNGs over the background, with captions '<name>, <style> "
        "style', licence per record, ATTRIBUTION and a seeded held-out split "
        "(docs/emoji.md). Entries that cannot be imported are listed in OUT/rejects.jsonl.")
    emoji.add_argument("sources", nargs="+", metavar="SOURCE", help="package tarball or folder")
    emoji.add_argument("-o", "--out", required=True, help="output folder")
    emoji.add_argument("--seed", type=int, default=0, help="split seed (default 0)")
    emoji.add_argument("--background", default="255,255,255",
                       help="R,G,B behind transparency (default 255,255,255: white)")
    emoji.add_argument("--overwrite", action="store_true", help="replace an earlier import")
    emoji.add_argument("--quiet", action="store_true", help="no progress bar")
    emoji.set_defaults(func=_run_import_emoji)
    parser.set_defaults(func=lambda args: (parser.print_help(), 2)[1])


def _run_import_emoji(args: argparse.Namespace) -> int:
    from pictor.data.emoji import import_emoji

    try:
        summary = import_emoji(args.sources, args.out, seed=args.seed,
                               background=_parse_background(args.background),
                               overwrite=args.overwrite, progress=not args.quiet)
    except ValueError as error:
        print(f"pictor data import emoji: {error}", file=sys.stderr)
        return 2
    for split, by_style in summary.counts.items():
        styles = ", ".join(f"{k} {v}" for k, v in by_style.items()) or "none"
        print(f"{split:20s} {sum(by_style.values()):6d} images, "
              f"{summary.identities[split]:5d} emoji ({styles})")
    rejected = sum(summary.rejected.values())
    reasons = ", ".join(f"{k} {v}" for k, v in summary.rejected.items())
    print(f"rejected {rejected}{f' ({reasons})' if reasons else ''}; listed in "
          f"{args.out}/rejects.jsonl")
    print(f"wrote {args.out}/train and {args.out}/heldout in {summary.seconds:.1f} s; next: "
          f"pictor data prepare {args.out}/train -o <shards>")
    return 0
