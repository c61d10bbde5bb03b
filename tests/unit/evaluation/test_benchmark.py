"""The suite runner end to end, with the renderer as a perfect model (ground truth)."""

from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from pictor.data.shapes import CATEGORIES, render_scene, scene_for_prompt
from pictor.data.suites import get_suite
from pictor.evaluation.benchmark import run_suite, wilson_interval
from pictor.evaluation.scorer import score_image


@dataclass
class _Generated:
    image: Image.Image


class GroundTruthRenderer:
    """Draws what the prompt says, with the project's renderer: what a perfect model would do."""

    def __init__(self, degrade: bool = False) -> None:
        self.degrade = degrade

    def generate(self, prompt, *, num_images, seed, **_):
        out = []
        for j in range(num_images):
            rng = np.random.default_rng([4, seed + j])  # the test seed namespace
            image = render_scene(scene_for_prompt(prompt, rng))
            out.append(_Generated(image))
        return out


def test_renders_of_the_suite_score_at_least_099_per_category():
    report = run_suite(GroundTruthRenderer(), "geneval-shapes", images_per_prompt=2,
                       progress=False)
    assert set(CATEGORIES) <= set(report.scores)
    for category in CATEGORIES:
        assert report.scores[category] >= 0.99, (category, report.scores)
    assert report.scores["overall"] >= 0.99
    assert len(report.results) == 2 * len(get_suite("geneval-shapes"))
    assert report.to_dict()["images"][0]["seed"] == 0


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
