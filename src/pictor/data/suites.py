"""Named, versioned prompt suites of the shapes world.

- `geneval-shapes` (v1): the alignment benchmark, 32 prompts per category (192), drawn in the
  `eval` seed namespace. Score it with `pictor.evaluation.scorer`; report per-category pass
  rates and their plain mean, as GenEval does (Ghosh et al. 2023).
- `validation-shapes` (v1): 16 prompts per category (96) in the `validation` namespace, for
  choosing checkpoints without touching the benchmark's draws.

How a suite is drawn (this procedure *is* the version): for each category, in `CATEGORIES`
order, the canonical prompts of the category are enumerated in a fixed order (`all_prompts`),
shuffled by `example_rng(namespace, category_index)` and taken in that order; when the
category has fewer distinct prompts than the suite asks for (`single_object` has 4), the
shuffle is repeated with the same stream until enough are taken, so every prompt appears
equally often (+-1). Changing the procedure, counts or namespaces means a new version number.
Seed namespaces are defined in `pictor.data.synth`; training never draws from these two.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from pictor.data.shapes import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    RELATIONS,
    SHAPES,
    ParsedPrompt,
    PromptObject,
    format_prompt,
)
from pictor.data.synth import example_rng


@dataclass(frozen=True)
class SuiteSpec:
    """How a suite is drawn."""

    name: str
    version: int  # bumped whenever the drawn prompts would change
    namespace: str  # seed namespace of pictor.data.synth
    prompts_per_category: int
    description: str


SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec(
            "geneval-shapes", 1, "eval", 32, "the shapes alignment benchmark (GenEval-style)"
        ),
        SuiteSpec(
            "validation-shapes", 1, "validation", 16, "checkpoint selection; not the benchmark"
        ),
    )
}
DEFAULT_SUITE = "geneval-shapes"


class SuiteItem(NamedTuple):
    """One prompt of a suite."""

    category: str
    prompt: str


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
    """The (category, prompt) items of a suite, category by category (see module docstring)."""
    spec = _suite_spec(name)
    items = []
    for category_index, category in enumerate(CATEGORIES):
        prompts = all_prompts(category)
        rng = example_rng(spec.namespace, category_index)
        chosen: list[str] = []
        while len(chosen) < spec.prompts_per_category:
            order = rng.permutation(len(prompts))
            chosen.extend(prompts[i] for i in order[: spec.prompts_per_category - len(chosen)])
        items.extend(SuiteItem(category, prompt) for prompt in chosen)
    return items


def suite_records(name: str = DEFAULT_SUITE) -> list[dict]:
    """The suite as JSON-ready records: suite, version, index, category, prompt."""
    spec = _suite_spec(name)
    return [
        {"suite": spec.name, "version": spec.version, "index": i, "category": c, "prompt": p}
        for i, (c, p) in enumerate(get_suite(name))
    ]


def export_suite(path: str | os.PathLike, name: str = DEFAULT_SUITE) -> int:
    """Write the suite to a JSONL file (one record per line); returns the number of prompts."""
    records = suite_records(name)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(record) + "\n" for record in records)
    return len(records)
