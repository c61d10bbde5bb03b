"""The shipped default model still draws what it drew: fixed-seed scorer verdicts, pinned.

shipped_verdicts.json (made by shipped_verdicts.py beside this file) holds images of the shipped
model, by prompt and seed, with the scorer's verdict, on canonical prompts and on held-out
phrasings, passes and failures, in float32 (the same on every CPU up to summation order; the
script keeps only verdicts that also hold at 21 steps). A change to sampling, layers, the text
encoder or the scorer that breaks the model flips some of them.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pictor.cli.generate import default_model_dir
from pictor.evaluation.scorer import score_image
from pictor.pipeline import load_pipeline

VERDICTS = json.loads((Path(__file__).with_name("shipped_verdicts.json")).read_text())


@pytest.fixture(scope="module")
def pipe():
    model = default_model_dir()
    pipe = load_pipeline(model, compute_dtype="float32")
    if pipe.model_sha256 != VERDICTS["model_sha256"]:
        pytest.fail(f"shipped_verdicts.json pins {VERDICTS['model']} ({VERDICTS['model_sha256'][:12]}), "
                    f"but the default model is {model} ({pipe.model_sha256[:12]}): rerun "
                    f"tests/integration/shipped_verdicts.py --write for the new default")
    return pipe


def test_the_pinned_set_covers_every_category_with_passes_and_failures():
    items = VERDICTS["items"]
    assert len(items) >= 12
    assert {i["category"] for i in items} == {"single_object", "colors", "two_object",
                                              "color_attr", "counting", "position"}
    assert {i["passed"] for i in items} == {True, False}
    assert any(i["prompt"] != i["canonical"] for i in items)  # held-out phrasings too


@pytest.mark.parametrize("item", VERDICTS["items"],
                         ids=[f"{i['category']}-{i['seed']}" for i in VERDICTS["items"]])
def test_fixed_seed_verdicts_are_reproduced(pipe, item):
    image = pipe.generate(item["prompt"], seed=item["seed"], layout=False)[0].image
    result = score_image(image, item["canonical"])
    assert result.passed == item["passed"], (item, result.reason)
