"""The suite runner end to end, with the renderer as a perfect model (ground truth)."""

import re
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from pictor.data.shapes import CATEGORIES, render_scene, scene_for_prompt
from pictor.data.suites import get_suite, image_seed
from pictor.evaluation.benchmark import run_suite, wilson_interval
from pictor.evaluation.scorer import score_image


@dataclass
class _Generated:
    image: Image.Image


class GroundTruthRenderer:
    """Draws what the prompt says, with the project's renderer: what a perfect model would do.
    `understands` maps paraphrases to their canonical form (a model that reads everyday words);
    `given` collects the prompts it was given."""

    def __init__(self, degrade: bool = False, understands: dict[str, str] | None = None) -> None:
        self.degrade = degrade
        self.understands = understands or {}
        self.given: list[str] = []

    def generate(self, prompt, *, num_images, seed, **_):
        self.given.append(prompt)
        out = []
        for j in range(num_images):
            rng = np.random.default_rng([4, seed + j])  # the test seed namespace
            scene = scene_for_prompt(self.understands.get(prompt, prompt), rng)
            out.append(_Generated(render_scene(scene)))
        return out


def paraphrase_reader(suite: str) -> GroundTruthRenderer:
    """A perfect model for a paraphrase suite."""
    return GroundTruthRenderer(understands={i.prompt: i.canonical for i in get_suite(suite)})


def test_renders_of_the_suite_score_at_least_099_per_category():
    report = run_suite(GroundTruthRenderer(), "geneval-shapes", images_per_prompt=2,
                       progress=False)
    assert set(CATEGORIES) <= set(report.scores)
    for category in CATEGORIES:
        assert report.scores[category] >= 0.99, (category, report.scores)
    assert report.scores["overall"] >= 0.99
    assert len(report.results) == 2 * len(get_suite("geneval-shapes"))
    first = report.to_dict()["images"][0]
    assert first["seed"] == image_seed("geneval-shapes", 0, 0) == 7_000_000
    assert "canonical" not in first  # the prompt is canonical
    # what the scorer saw, passes included: the scene of the prompt, one line per object
    assert first["prompt"] == "a triangle" and first["passed"]
    assert len(first["found"]) == 1 and re.fullmatch(
        r"(\w+) triangle at \(\d+\.\d, \d+\.\d\)", first["found"][0]), first["found"]


def test_a_paraphrase_suite_gives_the_paraphrase_and_judges_the_canonical():
    suite = "validation-shapes-para"
    model = paraphrase_reader(suite)
    report = run_suite(model, suite, images_per_prompt=1, progress=False)
    items = get_suite(suite)
    assert model.given == [item.prompt for item in items]  # the model reads the paraphrase
    assert report.scores["overall"] >= 0.99
    images = report.to_dict()["images"]
    assert [(r["prompt"], r["canonical"]) for r in images] == [
        (item.prompt, item.canonical) for item in items]
    assert [r["seed"] for r in images[:2]] == [9_000_000, 9_001_000]
    # a model that reads the paraphrase as a different scene fails: the canonical is judged
    wrong = GroundTruthRenderer(understands={i.prompt: "four stars" for i in items})
    assert run_suite(wrong, suite, images_per_prompt=1, progress=False).scores["colors"] == 0.0


@pytest.mark.parametrize("prompt", [
    "a red circle to the left of a blue square", "a white star below a green triangle",
    "four triangles", "an orange star and a cyan circle", "a square",
])
def test_scene_for_prompt_satisfies_its_prompt(prompt):
    for seed in range(20):
        image = render_scene(scene_for_prompt(prompt, np.random.default_rng([4, seed])))
        assert score_image(image, prompt).passed


def test_wilson_interval_closed_form():
    lo, hi = wilson_interval(50, 100)
    assert lo == pytest.approx(0.4038, abs=1e-4) and hi == pytest.approx(0.5962, abs=1e-4)
    lo, hi = wilson_interval(10, 10)
    assert hi == pytest.approx(1.0) and lo == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
