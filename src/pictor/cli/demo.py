"""`make demo` (python -m pictor.cli.demo): four prompts, four images each, into outputs/demo/.

Uses the default model ($PICTOR_MODEL, else the shipped one) and prints, per image, its path
and the shapes-world scorer's verdict (pictor.evaluation.scorer). Exits 2 with a reason when
the model is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pictor.cli.generate import add_model_argument

# (prompt, what the scorer judges it as): canonical prompts and one in everyday words (a
# training phrasing of the caption language, docs/captions.md)
DEMO_PROMPTS = (
    ("a red circle to the left of a blue square", "a red circle to the left of a blue square"),
    ("three stars", "three stars"),
    ("a green triangle and a purple star", "a green triangle and a purple star"),
    ("A drawing of a crimson disc above a cobalt block.", "a red circle above a blue square"),
)
IMAGES_PER_PROMPT = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pictor.cli.demo", description=__doc__)
    add_model_argument(parser)
    parser.add_argument("-o", "--output-dir", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)

    from pictor.cli.generate import resolve_model_dir, slug, unique_path

    try:
        model_dir = resolve_model_dir(args.model)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2

    from pictor.evaluation.scorer import score_image
    from pictor.pipeline import load_pipeline
    from pictor.provenance import save_png

    pipe = load_pipeline(model_dir)
    print(f"model: {model_dir} (sha256 {pipe.model_sha256[:12]}...)")
    num_passed = num_images = 0
    for prompt, canonical in DEMO_PROMPTS:
        print(f"\n{prompt!r}")
        for g in pipe.generate(prompt, num_images=IMAGES_PER_PROMPT, seed=0,
                               num_steps=args.steps):
            path = unique_path(args.output_dir, f"{slug(prompt)}-seed{g.record.seed}")
            save_png(g.image, path, g.record)
            verdict = score_image(g.image, canonical)
            num_passed += verdict.passed
            num_images += 1
            print(f"  {path}  {'PASS' if verdict.passed else 'FAIL'}: {verdict.reason}")
    print(f"\n{num_passed}/{num_images} images pass the scorer; images in {args.output_dir}/ "
          "(each PNG carries its provenance: `pictor inspect FILE`)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
