"""Prompt suites: fixed, balanced, inside the grammar, drawn from non-training seed streams."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from pictor.data.shapes import CATEGORIES, parse_prompt
from pictor.data.suites import (
    SUITES,
    all_prompts,
    export_suite,
    get_suite,
    list_suites,
    suite_records,
)
from pictor.data.synth import SEED_NAMESPACES, example_rng

# The exact v1 draws. A change here means the benchmark changed: bump the suite's version
# (or, if a numpy upgrade changed Generator.permutation, ship the v1 list as a file).
PINNED_SHA256 = {
    "geneval-shapes": "f498690b000a4b6bd06d39b45e9492100f1fb4ce87945b312e32820418aeb16f",
    "validation-shapes": "8d805fd99350b18027431dc0bf64516196bc0b988e70a0c405ecbeeaa41a1162",
}


def test_suites_are_listed_and_pinned():
    assert list_suites() == ["geneval-shapes", "validation-shapes"]
    for name in list_suites():
        digest = hashlib.sha256(json.dumps(get_suite(name)).encode()).hexdigest()
        assert digest == PINNED_SHA256[name], name
        assert get_suite(name) == get_suite(name)


def test_number_of_distinct_prompts_per_category():
    sizes = {category: len(set(all_prompts(category))) for category in CATEGORIES}
    assert sizes == {
        "single_object": 4,
        "colors": 4 * 8,
        "two_object": 4 * 3,
        "color_attr": 4 * 3 * 8 * 7,
        "counting": 3 * 4,
        "position": 4 * (32 * 31),
    }


@pytest.mark.parametrize("name", ["geneval-shapes", "validation-shapes"])
def test_suites_are_balanced_and_inside_the_grammar(name):
    items = get_suite(name)
    per_category = SUITES[name].prompts_per_category
    assert len(items) == per_category * len(CATEGORIES)
    assert [c for c, _ in items] == [c for c in CATEGORIES for _ in range(per_category)]
    for category in CATEGORIES:
        prompts = [p for c, p in items if c == category]
        assert all(parse_prompt(p).category == category for p in prompts)
        repeats = Counter(prompts).values()
        distinct = len(all_prompts(category))
        if distinct >= per_category:
            assert max(repeats) == 1
        else:  # every prompt equally often, +-1
            assert len(repeats) == distinct and max(repeats) - min(repeats) <= 1


def test_benchmark_and_validation_draw_differently():
    bench, val = get_suite("geneval-shapes"), get_suite("validation-shapes")
    assert [p for c, p in bench if c == "position"][:16] != [p for c, p in val if c == "position"]


def test_namespaces_never_share_a_stream():
    assert len(set(SEED_NAMESPACES.values())) == len(SEED_NAMESPACES)
    draws = {ns: example_rng(ns, 0).integers(0, 2**62, size=4).tolist() for ns in SEED_NAMESPACES}
    assert len({tuple(d) for d in draws.values()}) == len(SEED_NAMESPACES)
    # The suites' category streams (example seeds 0..5) are not any training example's stream.
    for category_index in range(len(CATEGORIES)):
        suite_draw = example_rng("eval", category_index).random(4)
        assert not np.array_equal(suite_draw, example_rng("train", category_index).random(4))
    with pytest.raises(ValueError, match="namespace"):
        example_rng("holdout", 0)


def test_export_jsonl(tmp_path):
    path = tmp_path / "suite.jsonl"
    assert export_suite(path, "validation-shapes") == 96
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == suite_records("validation-shapes")
    assert lines[0].keys() == {"suite", "version", "index", "category", "prompt"}
    assert [r["index"] for r in lines] == list(range(96))
    assert {r["version"] for r in lines} == {1}


def test_unknown_names():
    with pytest.raises(ValueError, match="geneval-shapes"):
        get_suite("geneval")
    with pytest.raises(ValueError, match="single_object"):
        all_prompts("colours")
