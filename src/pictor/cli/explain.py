"""`pictor explain`: the two diffusion processes as labelled image strips (a teaching view).

    pictor explain forward IMAGE [-o forward.png] [--model DIR]
        x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps at several t (Ho et al. 2020, eq. 4)
    pictor explain reverse "PROMPT" [-o reverse.png] [--gif reverse.gif] [--seed 0] [--steps 20]
        per sampler step: the sample x_t the network saw (top row) and its x0 prediction (bottom)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pictor.cli.generate import _error, add_model_argument, load_for_sampling, resolve_model_dir

FORWARD_FRACTIONS = (0.0, 0.1, 0.25, 0.4, 0.55, 0.7, 0.85, 1.0)  # of T - 1
CELL_PIXELS = 96  # images are upscaled (nearest) to this size in strips and GIFs
LABEL_PIXELS = 14


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("explain", help="Show the forward (noising) or reverse (sampling) "
                                              "process as an image strip.")
    sub = p.add_subparsers(dest="process", metavar="PROCESS")
    f = sub.add_parser("forward", help="noise an image: x_t at several timesteps t")
    f.add_argument("image", type=Path)
    f.add_argument("-o", "--output", type=Path, default=Path("forward.png"))
    f.add_argument("--seed", type=int, default=0, help="seed of the noise eps")
    add_model_argument(f, "model folder (its schedule and image size)")
    f.set_defaults(func=run_forward)
    r = sub.add_parser("reverse", help="sample a prompt: x_t and predicted x0 per step")
    r.add_argument("prompt")
    r.add_argument("-o", "--output", type=Path, default=Path("reverse.png"))
    r.add_argument("--gif", type=Path, default=None, help="also write an animated GIF")
    r.add_argument("--seed", type=int, default=0)
    r.add_argument("--steps", type=int, default=20)
    r.add_argument("--sampler", default="dpm++2m")
    r.add_argument("--guidance", type=float, default=None, help="CFG scale (default 4)")
    r.add_argument("--negative", default="")
    add_model_argument(r)
    r.set_defaults(func=run_reverse)
    p.set_defaults(func=lambda args: _error("choose a process: pictor explain forward|reverse"))


def _labelled(image, label: str):
    from PIL import Image, ImageDraw

    cell = Image.new("RGB", (CELL_PIXELS, CELL_PIXELS + LABEL_PIXELS), "white")
    cell.paste(image.convert("RGB").resize((CELL_PIXELS, CELL_PIXELS), Image.NEAREST), (0, 0))
    ImageDraw.Draw(cell).text((2, CELL_PIXELS + 1), label, fill="black")
    return cell


def strip(rows: list[list[tuple[object, str]]]):
    """A grid image: rows of (image, label) cells."""
    from PIL import Image

    cells = [[_labelled(im, label) for im, label in row] for row in rows]
    w, h = cells[0][0].size
    out = Image.new("RGB", (w * max(len(r) for r in cells), h * len(cells)), "white")
    for y, row in enumerate(cells):
        for x, cell in enumerate(row):
            out.paste(cell, (x * w, y * h))
    return out


def run_forward(args: argparse.Namespace) -> int:
    from PIL import Image

    from pictor.pipeline import load_pipeline

    try:
        pipe = load_pipeline(resolve_model_dir(args.model))
        image = Image.open(args.image)
        T = pipe.schedule.num_timesteps
        ts = sorted({round(f * (T - 1)) for f in FORWARD_FRACTIONS})
        noisy = pipe.forward_strip(image, ts, seed=args.seed)
    except (ValueError, OSError) as err:
        return _error(str(err))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    strip([[(im, f"t={t}") for im, t in zip(noisy, ts, strict=True)]]).save(args.output)
    print(args.output)
    return 0


def run_reverse(args: argparse.Namespace) -> int:
    try:
        pipe, guidance = load_for_sampling(args)
        family = getattr(pipe, "family", "diffusion")
        if family != "diffusion":
            raise ValueError(f"{pipe.model_name} holds a {family} model: it draws in one pass, "
                             "and explain reverse shows sampler steps (diffusion models only)")
        steps = pipe.trajectory(args.prompt, seed=args.seed, num_steps=args.steps,
                                sampler=args.sampler, guidance_scale=guidance,
                                negative_prompt=args.negative)
    except ValueError as err:
        return _error(str(err))
    args.output.parent.mkdir(parents=True, exist_ok=True)
    strip([[(s.x_t, f"x_t t={s.t:.0f}") for s in steps],
           [(s.x0_pred, f"x0 pred {s.step_index + 1}/{len(steps)}") for s in steps]]
          ).save(args.output)
    print(args.output)
    if args.gif is not None:
        frames = [strip([[(s.x_t, f"x_t t={s.t:.0f}"), (s.x0_pred, "predicted x0")]])
                  for s in steps]
        args.gif.parent.mkdir(parents=True, exist_ok=True)
        frames[0].save(args.gif, save_all=True, append_images=frames[1:], duration=200, loop=0)
        print(args.gif)
    return 0
