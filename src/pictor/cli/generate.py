"""`pictor generate`, `pictor inspect`, `pictor reproduce`: images from a trained model, with the
provenance record written into every PNG and read back.

    pictor generate "a red circle" [-n 4] [--seed 7] [--steps 20] [--sampler dpm++2m]
                    [--guidance 4] [--negative "..."] [--model DIR] [-o outputs/]
    pictor generate --prompts-from FILE_OR_DATASET [-n 1] ...   # many prompts, one model load
    pictor inspect IMAGE                      # the record as JSON (+ the XMP source type)
    pictor reproduce IMAGE [--model DIR] [-o FILE]   # exit 0: identical pixels, 1: not

The model folder defaults to $PICTOR_MODEL, else the repository's models/<DEFAULT_MODEL_NAME>.
Errors in the user's input (unknown sampler, missing model folder, image without a record) exit
with 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

DEFAULT_MODEL_NAME = "shapes-v11"


def default_model_dir() -> Path:
    """$PICTOR_MODEL, else <repo>/models/<DEFAULT_MODEL_NAME>."""
    env = os.environ.get("PICTOR_MODEL")
    if env:
        return Path(env)
    import pictor

    return Path(pictor.__file__).resolve().parents[2] / "models" / DEFAULT_MODEL_NAME


def resolve_model_dir(model: str | Path | None) -> Path:
    """The model folder to use; ValueError with how to get one when it does not exist."""
    path = Path(model) if model else default_model_dir()
    if not path.is_dir():
        how = ("" if model else " (the default: set PICTOR_MODEL or pass --model to use "
               "another)")
        raise ValueError(
            f"model folder {str(path)!r} does not exist{how}. Train one with `pictor train "
            "--config configs/shapes.yaml` (README: 'Training') and pass its final/ folder, "
            "e.g. --model runs/shapes/final")
    return path


def add_model_argument(parser: argparse.ArgumentParser, what: str = "model folder") -> None:
    """The `--model DIR` option every command that loads a model shares."""
    parser.add_argument("--model", default=None, metavar="DIR",
                        help=f"{what} (default $PICTOR_MODEL, else models/{DEFAULT_MODEL_NAME})")


def load_for_sampling(args: argparse.Namespace):
    """(pipeline, guidance_scale) for a sampling command: the sampler name is checked before the
    model loads (a typo fails fast), `--guidance` unset means the pipeline default.
    ValueError on a bad sampler or model folder."""
    from pictor.families.pipeline import load_model
    from pictor.pipeline import (
        DEFAULT_COMPUTE_DTYPE,
        DEFAULT_GUIDANCE_SCALE,
        canonical_sampler_name,
    )

    if args.sampler is not None:
        canonical_sampler_name(args.sampler)
    dtype = getattr(args, "dtype", None) or DEFAULT_COMPUTE_DTYPE
    # the model folder's config names its family: diffusion Pipeline, or GAN/VAE FamilyPipeline
    pipe = load_model(resolve_model_dir(args.model), compute_dtype=dtype)
    guidance = DEFAULT_GUIDANCE_SCALE if args.guidance is None else args.guidance
    return pipe, guidance


def family_options(args: argparse.Namespace) -> dict:
    """The diffusion sampling options a user gave explicitly, for a GAN or VAE pipeline (which
    refuses each with a clear error, pictor.families.pipeline)."""
    if getattr(args, "dtype", None) == "bfloat16":
        raise ValueError("--dtype bfloat16 applies to diffusion models; GAN and VAE models "
                         "compute in float32")
    return {"num_steps": args.steps, "sampler": args.sampler, "guidance_scale": args.guidance,
            "negative_prompt": getattr(args, "negative", ""),
            "guidance_interval": getattr(args, "guidance_interval", None),
            "layout": getattr(args, "layout", "off") == "on"}


def parse_guidance_interval(text: str) -> tuple[float, float | None] | str:
    """--guidance-interval: "all" (guide every step), "LO" (sigma >= LO) or "LO,HI"."""
    if text.strip().lower() in ("all", "none", "off"):
        return "all"
    try:
        parts = [float(v) for v in text.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or parts[0] < 0 or (len(parts) == 2 and parts[1] < parts[0]):
        raise argparse.ArgumentTypeError(
            f"{text!r}: give LO or LO,HI (noise levels sigma, 0 <= LO <= HI) or 'all'")
    return (parts[0], parts[1] if len(parts) == 2 else None)


def _interval(parsed: tuple[float, float | None] | str | None):
    """The pipeline's guidance_interval for a parsed --guidance-interval (None: its default)."""
    from pictor.pipeline import DEFAULT_GUIDANCE_INTERVAL

    if parsed is None:
        return DEFAULT_GUIDANCE_INTERVAL
    return None if parsed == "all" else parsed


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def unique_path(directory: Path, stem: str, suffix: str = ".png") -> Path:
    """directory/stem.png, or stem-1.png, stem-2.png, ... : never an existing file."""
    path, k = directory / f"{stem}{suffix}", 1
    while path.exists():
        path, k = directory / f"{stem}-{k}{suffix}", k + 1
    return path


def slug(prompt: str, max_chars: int = 40) -> str:
    """A file-name-safe slug of a prompt ("" -> "unconditional")."""
    words = "".join(c if c.isalnum() else "-" for c in prompt.lower()).split("-")
    text = "-".join(w for w in words if w)[:max_chars].strip("-")
    return text or "unconditional"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("generate", help="Generate images for a prompt (PNG + provenance).",
                              description="Generate images for a prompt; each PNG carries its "
                                          "provenance record (see `pictor inspect`).")
    p.add_argument("prompt", nargs="?", default=None,
                   help='the text prompt ("" for unconditional samples)')
    p.add_argument("--prompts-from", type=Path, default=None, metavar="PATH",
                   help="instead of PROMPT: every prompt of a text file (one per line, blank "
                        "lines skipped) or every distinct caption of a data set (prepared "
                        "shards or an imagefolder), each with -n images; e.g. a held-out split "
                        "to judge with `pictor eval-clip --generated`")
    p.add_argument("-n", "--num-images", type=int, default=4, help="images to make (default 4)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the first image; image i uses seed + i (default 0)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default 20; diffusion models only)")
    p.add_argument("--sampler", default=None,
                   help="sampler name (default dpm++2m; diffusion models only)")
    p.add_argument("--guidance", type=float, default=None,
                   help="classifier-free guidance scale (default 4; diffusion models only)")
    p.add_argument("--negative", default="", help="negative prompt (default none)")
    p.add_argument("--guidance-interval", type=parse_guidance_interval, default=None,
                   metavar="LO[,HI]",
                   help="guide only while the noise level sigma is in [LO, HI] (no HI: no upper "
                        "bound), the conditional prediction alone elsewhere, which is faster; "
                        "'all' guides every step (default 1, i.e. sigma >= 1)")
    p.add_argument("--layout", choices=("on", "off"), default="off",
                   help="layout guidance: a prompt that states one spatial relation (\"A to the "
                        "left of B\", right of, above, below) has A's and B's words steered to "
                        "their sides in the first steps, and count words (two, three, ...) weigh "
                        "more there (default off since shapes-v11: docs/alignment.md; docs/grounding.md)")
    p.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default=None,
                   help="compute dtype of the U-Net (default auto: bfloat16 where the CPU or GPU "
                        "has it natively, else float32); the record names the one used")
    add_model_argument(p)
    p.add_argument("-o", "--output-dir", type=Path, default=Path("outputs"),
                   help="folder for the PNGs (default outputs/)")
    p.set_defaults(func=run_generate)

    p = subparsers.add_parser("inspect", help="Print the provenance record of a pictor PNG.")
    p.add_argument("image", type=Path)
    p.set_defaults(func=run_inspect)

    p = subparsers.add_parser("reproduce",
                              help="Regenerate an image from its provenance record and compare.")
    p.add_argument("image", type=Path)
    add_model_argument(p)
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="also write the regenerated image here")
    p.set_defaults(func=run_reproduce)


def read_prompts(path: Path) -> list[str]:
    """--prompts-from: the distinct captions of a data set folder in first-seen order, or the
    non-blank lines of a UTF-8 text file. ValueError when there is none or it cannot be read."""
    if path.is_dir():
        from pictor.data.loader import open_dataset

        prompts = list(dict.fromkeys(open_dataset(path).captions))
    else:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"--prompts-from {str(path)!r}: cannot read it ({err})") from None
        prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise ValueError(f"--prompts-from {str(path)!r} holds no prompt")
    return prompts


def run_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from pictor.pipeline import DEFAULT_NUM_STEPS, DEFAULT_SAMPLER
    from pictor.prompts import check_prompt
    from pictor.provenance import save_png

    if (args.prompt is None) == (args.prompts_from is None):
        return _error("give a PROMPT or --prompts-from PATH (one of the two)")
    try:
        prompts = [args.prompt] if args.prompts_from is None else read_prompts(args.prompts_from)
        for prompt in prompts:
            check_prompt(prompt)
        check_prompt(args.negative, "negative prompt")
        pipe, guidance = load_for_sampling(args)
    except ValueError as err:
        return _error(str(err))
    many = len(prompts) > 1
    for prompt in tqdm(prompts, desc="generate", unit="prompt", disable=not many):
        try:
            if getattr(pipe, "family", "diffusion") != "diffusion":  # GAN, VAE: one network pass
                images = pipe.generate(prompt, num_images=args.num_images, seed=args.seed,
                                       **family_options(args))
            else:
                images = pipe.generate(
                    prompt, num_images=args.num_images, seed=args.seed,
                    num_steps=DEFAULT_NUM_STEPS if args.steps is None else args.steps,
                    sampler=args.sampler or DEFAULT_SAMPLER,
                    guidance_scale=guidance, negative_prompt=args.negative,
                    guidance_interval=_interval(args.guidance_interval),
                    layout=args.layout == "on")
        except ValueError as err:
            return _error(str(err))
        for g in images:
            path = unique_path(args.output_dir, f"{slug(prompt)}-seed{g.record.seed}")
            save_png(g.image, path, g.record)
            if not many:
                print(path)
    if many:
        print(f"wrote {len(prompts) * args.num_images} images of {len(prompts)} prompts to "
              f"{args.output_dir}/")
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from pictor.provenance import read_digital_source_type, read_provenance

    try:
        record = read_provenance(args.image)
        source = read_digital_source_type(args.image)
    except (ValueError, OSError) as err:
        return _error(str(err))
    data = asdict(record)
    data["xmp_digital_source_type"] = source
    print(json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False))
    return 0


def run_reproduce(args: argparse.Namespace) -> int:
    import warnings

    import numpy as np
    from PIL import Image

    from pictor.families.pipeline import load_model
    from pictor.hardware import device_name
    from pictor.pipeline import layout_from_extra
    from pictor.prompts import check_prompt
    from pictor.provenance import read_provenance, save_png

    try:
        record = read_provenance(args.image)
        check_prompt(record.prompt, "the record's prompt")
        check_prompt(record.negative_prompt, "the record's negative prompt")
        pipe = load_model(resolve_model_dir(args.model),
                          compute_dtype=record.extra.get("compute_dtype", "float32"))
        made_by = record.extra.get("family", "diffusion")  # records before the families: diffusion
        family = getattr(pipe, "family", "diffusion")
        if made_by != family:
            raise ValueError(f"the image was made by a {made_by} model, {pipe.model_name} is a "
                             f"{family} model; pass the model that made it with --model")
    except (ValueError, OSError) as err:
        return _error(str(err))
    if pipe.model_sha256 != record.model_sha256:
        warnings.warn(
            f"model sha256 differs: the image was made by {record.model_name} "
            f"({record.model_sha256[:12]}...), this is {pipe.model_name} "
            f"({pipe.model_sha256[:12]}...); the pixels will likely differ", stacklevel=1)
    try:
        if family != "diffusion":  # one network pass: the seed is all there is
            [g] = pipe.generate(record.prompt, num_images=1, seed=record.seed)
        else:
            [g] = pipe.generate(record.prompt, num_images=1, seed=record.seed,
                                num_steps=record.num_steps, sampler=record.sampler,
                                guidance_scale=record.guidance_scale,
                                negative_prompt=record.negative_prompt,
                                # absent in records made before the interval existed: every step
                                guidance_interval=record.extra.get("guidance_interval"),
                                # absent in records made before layout guidance existed: off;
                                # rules absent: the relation rule alone
                                layout=layout_from_extra(record.extra))
    except ValueError as err:
        return _error(str(err))
    if args.output is not None:
        save_png(g.image, args.output, g.record)
        print(f"wrote {args.output}")
    original = np.asarray(Image.open(args.image).convert("RGB"))
    again = np.asarray(g.image)
    if original.shape == again.shape and np.array_equal(original, again):
        print(f"match: {args.image} is reproduced exactly (seed {record.seed}, "
              f"{record.sampler}, {record.num_steps} steps)")
        return 0
    if original.shape != again.shape:
        detail = f"sizes differ: {original.shape} vs {again.shape}"
    else:
        diff = np.abs(original.astype(np.int16) - again.astype(np.int16))
        detail = (f"{int((diff.max(axis=-1) > 0).sum())} of {diff.shape[0] * diff.shape[1]} "
                  f"pixels differ, max difference {int(diff.max())}")
    print(f"mismatch: {args.image} is not reproduced ({detail})")
    made_on, here = record.extra.get("device"), device_name(pipe.device)
    if made_on is not None and made_on != here:
        print(f"note: the image was made on {made_on}, this is {here}; pixels are reproduced "
              "exactly on the same kind of processor, another may round its kernels "
              "differently (bfloat16 especially)")
    return 1
