"""Prompt suites: fixed, balanced, inside the grammar, drawn from non-training seed streams."""

from __future__ import annotations

import hashlib
import json
from collections import Counter

import numpy as np
import pytest

from pictor.data.shapes import CATEGORIES, parse_prompt
from pictor.data.suites import (
    DEFAULT_SUITE,
    SUITES,
    SuiteSpec,
    all_prompts,
    export_suite,
    get_suite,
    image_seed,
    list_suites,
    suite_records,
)
from pictor.data.synth import SEED_NAMESPACES, caption_rng, example_rng

# The exact draws, as sha256 of the JSON list of [category, prompt] pairs (how v1 was pinned
# before items had a canonical form). A change here means a suite changed: bump its version
# (or, if a numpy upgrade changed Generator.permutation, ship the lists as files).
PINNED_SHA256 = {
    "geneval-shapes": "efd268391133b295b8755120f94aafd5903a0e9023815f7540bc067f9f97ab20",
    "geneval-shapes-para": "4f251838d7b334fa522efb8d6d6183332656167d3420d26287c1c8a36a7ea9ba",
    "validation-shapes": "8d805fd99350b18027431dc0bf64516196bc0b988e70a0c405ecbeeaa41a1162",
    "validation-shapes-para": "e50b38ebabf1b838aa72013aee8eab2125bb7162250bc528455b95d1d12b88f9",
    # geneval-shapes v1 under its new name: exactly the prompts older numbers were scored on
    "geneval-shapes-v1": "f498690b000a4b6bd06d39b45e9492100f1fb4ce87945b312e32820418aeb16f",
}
CANONICAL_SUITES = ("geneval-shapes", "validation-shapes", "geneval-shapes-v1")
PARA_SUITES = {"geneval-shapes-para": "geneval-shapes",
               "validation-shapes-para": "validation-shapes"}


def _pairs_sha256(name: str) -> str:
    items = get_suite(name)
    return hashlib.sha256(json.dumps([[i.category, i.prompt] for i in items]).encode()).hexdigest()


def test_suites_are_listed_and_pinned():
    assert list_suites() == ["geneval-shapes", "geneval-shapes-para", "validation-shapes",
                             "validation-shapes-para", "geneval-shapes-v1"]
    assert DEFAULT_SUITE == "geneval-shapes" and SUITES[DEFAULT_SUITE].version == 2
    for name in list_suites():
        assert _pairs_sha256(name) == PINNED_SHA256[name], name
        assert get_suite(name) == get_suite(name)
    for name in CANONICAL_SUITES:
        assert all(item.prompt == item.canonical for item in get_suite(name))


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


@pytest.mark.parametrize("name", list(SUITES))
def test_suites_are_balanced_and_inside_the_grammar(name):
    items = get_suite(name)
    per_category = SUITES[name].prompts_per_category
    assert len(items) == per_category * len(CATEGORIES)
    assert [item.category for item in items] == [c for c in CATEGORIES for _ in range(per_category)]
    for category in CATEGORIES:
        prompts = [item.canonical for item in items if item.category == category]
        assert all(parse_prompt(p).category == category for p in prompts)
        repeats = Counter(prompts).values()
        distinct = len(all_prompts(category))
        if distinct >= per_category:
            assert max(repeats) == 1
        else:  # every prompt equally often, +-1
            assert len(repeats) == distinct and max(repeats) - min(repeats) <= 1


def test_benchmark_and_validation_draw_differently():
    bench, val = get_suite("geneval-shapes"), get_suite("validation-shapes")
    assert [i.prompt for i in bench if i.category == "position"][:16] != [
        i.prompt for i in val if i.category == "position"]


def test_v2_is_a_fresh_draw_in_a_new_namespace():
    v1, v2 = SUITES["geneval-shapes-v1"], SUITES["geneval-shapes"]
    assert (v1.namespace, v1.version, v1.image_seed_offset) == ("eval", 1, 0)
    assert v2.namespace == "eval2" and v2.namespace not in ("train", "validation", "eval")
    old, new = get_suite("geneval-shapes-v1"), get_suite("geneval-shapes")
    for category in ("colors", "color_attr", "position"):  # enough prompts to differ
        first = [i.prompt for i in old if i.category == category]
        assert first != [i.prompt for i in new if i.category == category]
    assert len({i.prompt for i in old if i.category == "position"}
               & {i.prompt for i in new if i.category == "position"}) < 5


@pytest.mark.parametrize("para, base", PARA_SUITES.items())
def test_paraphrase_suites_say_the_canonical_items_in_heldout_phrasings(para, base):
    from test_captions import assert_same_scene, training_in

    spec = SUITES[para]
    assert spec.captions == "heldout-v1" and spec.namespace == SUITES[base].namespace
    items, canonical = get_suite(para), get_suite(base)
    assert [(i.category, i.canonical) for i in items] == [(i.category, i.prompt)
                                                          for i in canonical]
    for item in items:
        assert item.prompt != item.canonical
        assert not training_in(item.prompt), item
    # item i is paraphrased from its own caption stream, apart from the prompt draw
    from pictor.data.captions import paraphrase

    for i in (0, 50, len(items) - 1):
        caption = paraphrase(parse_prompt(items[i].canonical), caption_rng(spec.namespace, i),
                             "heldout")
        assert caption.text == items[i].prompt
        assert_same_scene(caption, items[i].canonical, "heldout")


def test_a_paraphrase_suite_refuses_another_caption_language(monkeypatch):
    stale = SuiteSpec("old-para", 1, "eval2", 2, "written in an older caption language",
                      image_seed_offset=1, captions="heldout-v0")
    monkeypatch.setitem(SUITES, "old-para", stale)
    with pytest.raises(ValueError, match="new version"):
        get_suite("old-para")


def test_image_seeds_are_never_shared_between_new_suites():
    """Image j of prompt i: base + offset + 1000 i + j. v1 and validation-shapes keep their old
    seeds (they shared them, as before); every suite since v2 has its own."""
    assert image_seed("geneval-shapes-v1", 3, 2) == 3002  # the old formula, unchanged
    assert image_seed("validation-shapes", 3, 2, base_seed=10) == 3012
    assert image_seed("geneval-shapes", 3, 2) == 7_003_002

    def seeds(name: str) -> set[int]:
        return {image_seed(name, i, j) for i in range(len(get_suite(name))) for j in range(999)}

    new = ("geneval-shapes", "geneval-shapes-para", "validation-shapes-para")
    all_seeds = {name: seeds(name) for name in SUITES}
    for name in new:
        for other in SUITES:
            if other != name:
                assert not all_seeds[name] & all_seeds[other], (name, other)
    with pytest.raises(ValueError, match="1000 images per prompt"):
        image_seed("geneval-shapes", 0, 1000)


def test_namespaces_never_share_a_stream():
    assert len(set(SEED_NAMESPACES.values())) == len(SEED_NAMESPACES)
    draws = {ns: example_rng(ns, 0).integers(0, 2**62, size=4).tolist() for ns in SEED_NAMESPACES}
    draws |= {f"{ns} captions": caption_rng(ns, 0).integers(0, 2**62, size=4).tolist()
              for ns in SEED_NAMESPACES}
    assert len({tuple(d) for d in draws.values()}) == 2 * len(SEED_NAMESPACES)
    # The suites' category streams (example seeds 0..5) are not any training example's stream.
    for category_index in range(len(CATEGORIES)):
        for namespace in ("eval", "eval2", "validation"):
            suite_draw = example_rng(namespace, category_index).random(4)
            assert not np.array_equal(suite_draw, example_rng("train", category_index).random(4))
    with pytest.raises(ValueError, match="namespace"):
        example_rng("holdout", 0)
    with pytest.raises(ValueError, match="namespace"):
        caption_rng("holdout", 0)


def test_export_jsonl(tmp_path):
    path = tmp_path / "suite.jsonl"
    assert export_suite(path, "validation-shapes") == 96
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert lines == suite_records("validation-shapes")
    assert lines[0].keys() == {"suite", "version", "index", "category", "prompt", "canonical"}
    assert [r["index"] for r in lines] == list(range(96))
    assert {r["version"] for r in lines} == {1}
    assert all(r["prompt"] == r["canonical"] for r in lines)
    assert export_suite(path, "geneval-shapes-para") == 192
    para = [json.loads(line) for line in path.read_text().splitlines()]
    assert [r["canonical"] for r in para] == [i.prompt for i in get_suite("geneval-shapes")]
    assert all(r["prompt"] != r["canonical"] for r in para)


def test_unknown_names():
    with pytest.raises(ValueError, match="geneval-shapes"):
        get_suite("geneval")
    with pytest.raises(ValueError, match="single_object"):
        all_prompts("colours")
