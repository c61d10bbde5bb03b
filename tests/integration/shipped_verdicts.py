"""Pick the fixed-seed scorer verdicts that test_shipped_model.py pins for the shipped model.

    .venv/bin/python tests/integration/shipped_verdicts.py [--model models/<name>] --write

For every category of `validation-shapes` (canonical prompts) and of `validation-shapes-para`
(held-out phrasings), it generates candidate images with the shipped defaults and layout
guidance off (the model alone), in float32: bfloat16 kernels round differently from one
processor to the next (and are emulated, slowly, where the CPU lacks them), so the test pins
float32, whose pixels agree across CPUs up to summation order. An image is kept only if its
verdict also holds for the same seed sampled in float32 with 21 steps instead of 20 (a borderline
image, whose verdict a rounding difference could flip, rarely survives that). Passes and failures are both
kept (two passes and one failure per category where the model has them), so a change to sampling
or layers that breaks the model flips verdicts either way. Writes shipped_verdicts.json beside
this file with the model's sha256: the test refuses to compare against another model's verdicts.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "shipped_verdicts.json"
SUITES = ("validation-shapes", "validation-shapes-para")
PER_CATEGORY = {True: 2, False: 1}  # passes, failures kept per category and suite
CANDIDATE_SEEDS = 6  # seeds tried per prompt (image seeds of the suite)


def verdict(pipe, prompt: str, canonical: str, seed: int, num_steps: int = 20) -> bool:
    from pictor.evaluation.scorer import score_image

    image = pipe.generate(prompt, seed=seed, layout=False, num_steps=num_steps)[0].image
    return score_image(image, canonical).passed


def main(argv: list[str] | None = None) -> int:
    import torch

    from pictor.cli.generate import resolve_model_dir
    from pictor.data.suites import get_suite, image_seed
    from pictor.pipeline import load_pipeline

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model folder (default: the shipped one)")
    parser.add_argument("--write", action="store_true", help=f"write {OUT.name}")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    model_dir = resolve_model_dir(args.model)
    pipe = load_pipeline(model_dir, compute_dtype="float32")
    pipe.trace_after_calls = None
    items = []
    for suite in SUITES:
        need: dict[tuple[str, bool], int] = {}
        for i, item in enumerate(get_suite(suite)):
            for j in range(CANDIDATE_SEEDS):
                key_pass = (item.category, True)
                key_fail = (item.category, False)
                if (need.get(key_pass, 0) >= PER_CATEGORY[True]
                        and need.get(key_fail, 0) >= PER_CATEGORY[False]):
                    break
                seed = image_seed(suite, i, j)
                passed = verdict(pipe, item.prompt, item.canonical, seed)
                if need.get((item.category, passed), 0) >= PER_CATEGORY[passed]:
                    continue
                if verdict(pipe, item.prompt, item.canonical, seed, num_steps=21) != passed:
                    continue  # a borderline image, not a stable verdict
                need[(item.category, passed)] = need.get((item.category, passed), 0) + 1
                items.append({"suite": suite, "category": item.category, "prompt": item.prompt,
                              "canonical": item.canonical, "seed": seed, "passed": passed})
                print(f"{suite} {item.category:14s} seed {seed:>8} "
                      f"{'pass' if passed else 'FAIL'}  {item.prompt}")
    data = {"model": model_dir.name, "model_sha256": pipe.model_sha256,
            "settings": "pictor generate defaults in float32, layout guidance off", "items": items}
    if args.write:
        OUT.write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {len(items)} verdicts to {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
