"""An emoji model on the held-out split, judged by the emoji CLIP, against issue 25's bars.

    .venv/bin/python benchmarks/emoji_heldout.py --model models/emoji-v1 --clip runs/emoji-clip \\
        -o models/emoji-v1/eval

Runs the project's own commands and times them: `pictor generate --prompts-from` one image per
held-out caption (every caption of data/emoji-heldout-64, dpm++2m 20 steps, guidance 4: the
pipeline's defaults, nothing tuned on this split), then `pictor eval-clip` with the training
split for memorisation and skin-tone negatives, and a grid of 4 captions per split. The real
held-out images give each figure's ceiling. Writes benchmarks/results/<name>.json and a section
of BENCHMARKS.md with the bars:
- style-transfer captions: R-precision of generated images >= 0.7 x that of the real images;
  style accuracy (the true caption beats the same name in the other two styles) >= 0.8;
- composition captions: skin-tone hard-negative accuracy >= 0.5;
- unseen identities: reported as measured.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import environment, markdown_table, update_markdown_section, write_json  # noqa: E402

NAME = "emoji_heldout"
R_PRECISION_RATIO = 0.7
STYLE_ACCURACY = 0.8
TONE_ACCURACY = 0.5
SPLITS = ("heldout_style", "heldout_composition", "heldout_unseen")
TIMING_FILE = "generation.json"


def run(cmd: list[str]) -> float:
    """Run a command (its output passes through); its wall seconds. Exits on failure."""
    print("$", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - start


def value(figure: dict | None) -> float | None:
    return None if figure is None else figure["value"]


def share(figure: dict) -> str:
    """0.740 [0.69, 0.79]: the share and its 95% Wilson interval."""
    low, high = figure["interval_95"]
    return f"{figure['value']:.3f} [{low:.2f}, {high:.2f}]"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, required=True, help="an emoji model folder")
    parser.add_argument("--clip", type=Path, required=True, help="a pictor train-clip folder")
    parser.add_argument("--data", type=Path, default=Path("data/emoji-heldout-64"))
    parser.add_argument("--train", type=Path, default=Path("data/emoji-64"))
    parser.add_argument("-o", "--output-dir", type=Path, required=True,
                        help="report.json, report.md, grid.png go here; images in <it>/images")
    parser.add_argument("--name", default=NAME,
                        help=f"results/<name>.json and BENCHMARKS.md section (default {NAME})")
    parser.add_argument("--no-markdown", action="store_true",
                        help="write results/<name>.json only, no BENCHMARKS.md section (a "
                             "caller that writes its own table, e.g. benchmarks/families.py)")
    parser.add_argument("--generated", type=Path, default=None,
                        help="judge these images of the model instead of generating them")
    args = parser.parse_args(argv)
    pictor = [sys.executable, "-m", "pictor.cli.main"]
    images, generate_seconds = args.generated, None
    if images is None:
        images = args.output_dir / "images"
        if images.exists() and any(images.iterdir()):
            raise SystemExit(f"{images} is not empty: give a fresh --output-dir")
        generate_seconds = run([*pictor, "generate", "--prompts-from", str(args.data), "-n",
                                "1", "--model", str(args.model), "-o", str(images)])
        (images / TIMING_FILE).write_text(json.dumps({"generate_seconds": generate_seconds}))
    elif (images / TIMING_FILE).is_file():  # made by this script: its timing travels with it
        generate_seconds = json.loads((images / TIMING_FILE).read_text())["generate_seconds"]
    eval_seconds = run([*pictor, "eval-clip", "--clip", str(args.clip), "--data", str(args.data),
                        "--generated", str(images), "--train", str(args.train),
                        "-o", str(args.output_dir), "--grid", "4"])
    report = json.loads((args.output_dir / "report.json").read_text())
    groups = report["groups"]
    num_images = groups["all"]["generated"]["num_images"]

    rows = []
    for split in SPLITS:
        entry = groups[split]
        real, gen = entry["real"], entry["generated"]
        dist = entry["distribution"]
        r_real, r_gen = value(real["r_precision"]), value(gen["r_precision"])
        rows.append([split, gen["num_images"],
                     f"{share(gen['r_precision'])} / {r_real:.3f} ({r_gen / r_real:.2f}x)",
                     *(f"{share(gen[k])} / {value(real[k]):.3f}" if gen[k] else "n/a"
                       for k in ("hard_negative_style", "hard_negative_tone")),
                     f"{gen['clip_score']:.1f} / {real['clip_score']:.1f}",
                     "-" if dist is None else
                     f"{dist['generated_vs_real']['fd']:.1f} ({dist['real_vs_real']['fd']:.1f})",
                     f"{gen['memorisation']['near_copy_share']:.3f}"])
    style, comp = groups["heldout_style"], groups["heldout_composition"]
    real_r = value(style["real"]["r_precision"])
    gen_r = style["generated"]["r_precision"]
    # check -> (value, 95% interval, bar); the ratio's interval is the generated share's over
    # the real share (the ceiling, taken as fixed)
    checks = {
        "style R-precision, generated / real": (
            gen_r["value"] / real_r, [x / real_r for x in gen_r["interval_95"]],
            R_PRECISION_RATIO),
        "style accuracy (style split)": (
            *_value_interval(style["generated"]["hard_negative_style"]), STYLE_ACCURACY),
        "skin-tone accuracy (composition split)": (
            *_value_interval(comp["generated"]["hard_negative_tone"]), TONE_ACCURACY)}
    env = environment()
    write_json(args.name, {
        "model": str(args.model), "clip": str(args.clip), "clip_sha256": report["judge"]["sha256"],
        "data": str(args.data), "num_images": num_images,
        "generate_seconds": generate_seconds, "eval_seconds": eval_seconds,
        "checks": {k: {"value": v, "interval_95": i, "bar": b, "met": v >= b}
                   for k, (v, i, b) in checks.items()},
        "report": report, "environment": env})

    body = (f"`{args.model}` on the emoji held-out split, judged by the emoji CLIP "
            f"(`{args.clip}`, sha256 {report['judge']['sha256'][:12]}): one image per held-out "
            f"caption ({num_images}), dpm++2m 20 steps, guidance 4 (the defaults; nothing was "
            f"tuned on this split). Each cell is generated / real held-out images (the "
            f"ceiling). R-precision: the true caption first among 100 (chance 0.010); style: "
            f"the true caption beats the same name in the two other styles (chance 0.333); "
            f"tone: it beats the same emoji and style with every other skin tone. FD on the "
            f"judge's features against a real half (the real-vs-real floor in brackets). "
            + ("" if generate_seconds is None else f"Generation {generate_seconds:.0f} s, ")
            + f"judging {eval_seconds:.0f} s. Written by "
            f"`benchmarks/emoji_heldout.py` ({env['date_utc']}; raw: "
            f"`benchmarks/results/{args.name}.json`).\n\n"
            + markdown_table(["split", "images", "R-precision", "style accuracy",
                              "skin-tone accuracy", "CLIPScore", "FD (floor)",
                              "near-copies of training images"], rows)
            + "\n\nIssue 25's bars:\n\n"
            + markdown_table(["check", "measured [95% interval]", "bar", "met"],
                             [[k, f"{v:.3f} [{i[0]:.2f}, {i[1]:.2f}]", f">= {b}",
                               "yes" if v >= b else "**no**"]
                              for k, (v, i, b) in checks.items()]))
    if not args.no_markdown:
        update_markdown_section(args.name, body)
    print(body)
    return 0


def _value_interval(figure: dict) -> tuple[float, list[float]]:
    return figure["value"], figure["interval_95"]


if __name__ == "__main__":
    raise SystemExit(main())
