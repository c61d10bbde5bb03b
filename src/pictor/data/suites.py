"""Named, versioned prompt suites of the shapes world.

Which suite decides and which only reports:
- `validation-shapes` (v1) and `validation-shapes-para` (v1) *decide*: checkpoints, sampling
  settings, recipes and ship candidates are chosen on them, as often as needed. 16 prompts per
  category (96) in the `validation` seed namespace; `-para` says the same canonical prompts in
  held-out phrasings (pictor.data.captions), for choosing on robustness to wording.
- `geneval-shapes` (v2) and `geneval-shapes-para` (v1) *report*: the alignment benchmark, run
  once per shipped candidate, after the choice. 32 prompts per category (192) in the `eval2`
  namespace, which nobody had looked at when they were made; `-para` is the same canonical
  prompts in held-out phrasings. Score with `pictor.evaluation.scorer`; report per-category
  pass rates and their plain mean, as GenEval does (Ghosh et al. 2023).
- `geneval-shapes-v1` (v1): the first benchmark draw (`eval` namespace), kept so that older
  numbers (those of shapes-v10 and before) can be reproduced. Settings were chosen while looking
  at it, so it is no longer a final exam.

Held-out phrasings: training data never contains them (`pictor data synth` and every training
loop draw training phrasings only); `validation-shapes-para` sees them while decisions are
made, `geneval-shapes-para` only at the end.

How a suite is drawn (this procedure *is* the version): for each category, in `CATEGORIES`
order, the canonical prompts of the category are enumerated in a fixed order (`all_prompts`),
shuffled by `example_rng(namespace, category_index)` and taken in that order; when the
category has fewer distinct prompts than the suite asks for (`single_object` has 4), the
shuffle is repeated with the same stream until enough are taken, so every prompt appears
equally often (+-1). A paraphrase suite then says item i in held-out phrasings drawn from
`caption_rng(namespace, i)`, a stream apart from the prompt draw; its canonical items are those
of the canonical suite of the same namespace and size. Changing the procedure, counts,
namespaces or the caption language means a new version number.

Image seeds: image j of prompt i is generated with seed `base_seed + image_seed_offset + 1000 i
+ j` (`image_seed`). Every suite since v2 has its own offset, so no (prompt, image seed) pair
of one suite recurs in another (single_object has only 4 prompts, so without offsets two
suites would share many). Seed namespaces are defined in `pictor.data.synth`; training never
draws from the suites' namespaces.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pictor.data.captions import CAPTION_LANGUAGE_VERSION, paraphrase
from pictor.data.shapes import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    RELATIONS,
    SHAPES,
    ParsedPrompt,
    PromptObject,
    format_prompt,
    parse_prompt,
)
from pictor.data.synth import caption_rng, example_rng

IMAGE_SEED_STRIDE = 1000  # image seeds of prompt i: offset + 1000 i + j, j < 1000
HELDOUT_CAPTIONS = f"heldout-v{CAPTION_LANGUAGE_VERSION}"


@dataclass(frozen=True)
class SuiteSpec:
    """How a suite is drawn."""

    name: str
    version: int  # bumped whenever the drawn prompts would change
    namespace: str  # seed namespace of pictor.data.synth
    prompts_per_category: int
    description: str
    image_seed_offset: int = 0  # image j of prompt i: base seed + offset + 1000 i + j
    captions: str = "canonical"  # or "heldout-v<N>": prompts in held-out phrasings of v<N>


SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec("geneval-shapes", 2, "eval2", 32,
                  "the shapes alignment benchmark (GenEval-style); reports, never decides",
                  image_seed_offset=7_000_000),
        SuiteSpec("geneval-shapes-para", 1, "eval2", 32,
                  "geneval-shapes in held-out phrasings; reports, never decides",
                  image_seed_offset=8_000_000, captions="heldout-v1"),
        SuiteSpec("validation-shapes", 1, "validation", 16,
                  "decides: checkpoints, settings, recipes; not the benchmark"),
        SuiteSpec("validation-shapes-para", 1, "validation", 16,
                  "validation-shapes in held-out phrasings; decides on robustness to wording",
                  image_seed_offset=9_000_000, captions="heldout-v1"),
        SuiteSpec("geneval-shapes-v1", 1, "eval", 32,
                  "the first benchmark draw, for reproducing older numbers"),
    )
}
DEFAULT_SUITE = "geneval-shapes"


class SuiteItem(NamedTuple):
    """One prompt of a suite: `prompt` is what the model is given, `canonical` what the scorer
    judges (the canonical caption of the same scene; equal to `prompt` in canonical suites)."""

    category: str
    prompt: str
    canonical: str


def all_prompts(category: str) -> list[str]:
    """Every canonical prompt of a category, in a fixed order."""
    shapes, colors = SHAPES, list(COLORS)
    if category == "single_object":
        structures = [ParsedPrompt(category, (PromptObject(s),), 1) for s in shapes]
    elif category == "colors":
        structures = [
            ParsedPrompt(category, (PromptObject(s, c),), 1)
            for s, c in itertools.product(shapes, colors)
        ]
    elif category == "two_object":
        structures = [
            ParsedPrompt(category, (PromptObject(a), PromptObject(b)), 2)
            for a, b in itertools.permutations(shapes, 2)
        ]
    elif category == "color_attr":
        structures = [
            ParsedPrompt(category, (PromptObject(a, ca), PromptObject(b, cb)), 2)
            for (a, b), (ca, cb) in itertools.product(
                itertools.permutations(shapes, 2), itertools.permutations(colors, 2)
            )
        ]
    elif category == "counting":
        structures = [
            ParsedPrompt(category, (PromptObject(s),), n)
            for n, s in itertools.product(COUNT_WORDS, shapes)
        ]
    elif category == "position":
        objects = [PromptObject(s, c) for s, c in itertools.product(shapes, colors)]
        structures = [
            ParsedPrompt(category, (a, b), 2, relation)
            for relation, (a, b) in itertools.product(RELATIONS, itertools.permutations(objects, 2))
        ]
    else:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return [format_prompt(p) for p in structures]


def list_suites() -> list[str]:
    """Names of the built-in suites."""
    return list(SUITES)


def _suite_spec(name: str) -> SuiteSpec:
    if name not in SUITES:
        raise ValueError(f"unknown suite {name!r}; choose one of {', '.join(SUITES)}")
    return SUITES[name]


def get_suite(name: str = DEFAULT_SUITE) -> list[SuiteItem]:
    """The items of a suite, category by category (see module docstring)."""
    spec = _suite_spec(name)
    canonical: list[tuple[str, str]] = []
    for category_index, category in enumerate(CATEGORIES):
        prompts = all_prompts(category)
        rng = example_rng(spec.namespace, category_index)
        chosen: list[str] = []
        while len(chosen) < spec.prompts_per_category:
            order = rng.permutation(len(prompts))
            chosen.extend(prompts[i] for i in order[: spec.prompts_per_category - len(chosen)])
        canonical.extend((category, prompt) for prompt in chosen)
    if spec.captions == "canonical":
        return [SuiteItem(category, prompt, prompt) for category, prompt in canonical]
    if spec.captions != HELDOUT_CAPTIONS:  # the caption language changed under the suite
        raise ValueError(f"suite {name!r} is written in {spec.captions!r} but the caption "
                         f"language is {HELDOUT_CAPTIONS!r}: give the suite a new version")
    return [SuiteItem(category, paraphrase(parse_prompt(prompt), caption_rng(spec.namespace, i),
                                           "heldout").text, prompt)
            for i, (category, prompt) in enumerate(canonical)]


def image_seed(name: str, prompt_index: int, image_index: int, base_seed: int = 0) -> int:
    """The seed of image `image_index` of prompt `prompt_index` of suite `name`."""
    if not 0 <= image_index < IMAGE_SEED_STRIDE:
        raise ValueError(f"a suite run makes at most {IMAGE_SEED_STRIDE} images per prompt, "
                         f"got image index {image_index}")
    return (base_seed + _suite_spec(name).image_seed_offset + IMAGE_SEED_STRIDE * prompt_index
            + image_index)


def suite_records(name: str = DEFAULT_SUITE) -> list[dict]:
    """The suite as JSON-ready records: suite, version, index, category, prompt, canonical."""
    spec = _suite_spec(name)
    return [
        {"suite": spec.name, "version": spec.version, "index": i, "category": item.category,
         "prompt": item.prompt, "canonical": item.canonical}
        for i, item in enumerate(get_suite(name))
    ]


def export_suite(path: str | os.PathLike, name: str = DEFAULT_SUITE) -> int:
    """Write the suite to a JSONL file (one record per line); returns the number of prompts."""
    records = suite_records(name)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return len(records)
