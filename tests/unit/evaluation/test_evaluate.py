"""The evaluation path with ground truth as the model: renders of the suite's prompts score >= 0.99
through `evaluate`, their distribution metrics sit at the real-vs-real floor, the floor is far
below the distance to a wrong distribution, and the report folder holds every file."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from PIL import Image, ImageFilter
from test_benchmark import GroundTruthRenderer, paraphrase_reader

from pictor.data.shapes import CATEGORIES
from pictor.data.suites import get_suite
from pictor.evaluation.evaluate import (
    FLOOR_NAMESPACE,
    FLOOR_SEED_OFFSET,
    REFERENCE_SEED_OFFSET,
    SamplingSettings,
    evaluate,
    mean_rate_interval,
    parse_sweep,
    reference_images,
)
from pictor.evaluation.features import load_feature_extractor
from pictor.evaluation.metrics import distribution_metrics
from pictor.evaluation.report import write_report

SUITE = "geneval-shapes"


@pytest.fixture(scope="module")
def features():
    return load_feature_extractor("shapes")


@pytest.fixture(scope="module")
def ground_truth_evaluation(features):
    return evaluate([GroundTruthRenderer()], suite=SUITE, images_per_prompt=2,
                    features=features, sweeps={"guidance": [1.0]}, progress=False)


def test_ground_truth_scores_at_least_099_through_the_eval_path(ground_truth_evaluation):
    run = ground_truth_evaluation.models[0].run
    for category in CATEGORIES:
        assert run.report.scores[category] >= 0.99, run.report.scores
    assert run.report.scores["overall"] >= 0.99
    lo, hi = run.overall_interval
    assert lo <= run.report.scores["overall"] <= hi == 1.0


def test_ground_truth_sits_at_the_real_vs_real_floor(ground_truth_evaluation):
    """Renders from a third seed stream are a third sample of the real distribution, so their
    distance to the reference is another draw of the floor."""
    evaluation = ground_truth_evaluation
    floor = evaluation.references[64].floor
    gt = evaluation.models[0].run.distribution
    print("floor", floor, "\nground truth", gt)
    assert gt.num_images == floor.num_images == 2 * len(get_suite(SUITE))
    assert gt.frechet_distance < 1.5 * floor.frechet_distance
    assert abs(gt.kid) < 3 * gt.kid_std + abs(floor.kid)
    assert gt.precision > 0.8 and gt.recall > 0.8
    div = evaluation.models[0].run.diversity
    assert 0.85 < div.ratio < 1.15, div


def test_the_floor_is_far_below_wrong_distributions(features):
    """Floor: two independent real sets of the suite's prompts (192 each). Against it: a set
    that dropped modes (4 of the 32 prompts of each category), one of single shapes only (a
    wrong marginal) and heavily blurred renders (sigma 2.5 px)."""
    items = get_suite(SUITE)
    reference = features.features(reference_images(items, 1, "eval", REFERENCE_SEED_OFFSET, 64))

    def against(images):
        return distribution_metrics(reference, features.features(images))

    floor_images = reference_images(items, 1, FLOOR_NAMESPACE, FLOOR_SEED_OFFSET, 64)
    floor = against(floor_images)
    few = [item for i, item in enumerate(items) if i % 32 < 4]
    dropped = against(reference_images(few, 8, FLOOR_NAMESPACE, FLOOR_SEED_OFFSET, 64))
    singles = [item for item in items if item.category in ("single_object", "colors")]
    one_shape = against(reference_images(singles * 3, 1, FLOOR_NAMESPACE, FLOOR_SEED_OFFSET, 64))
    blurred = against([im.filter(ImageFilter.GaussianBlur(2.5)) for im in floor_images])
    print(f"floor {floor}\ndropped {dropped}\none shape {one_shape}\nblurred {blurred}")
    assert floor.precision > 0.9 and floor.recall > 0.9
    assert dropped.recall < floor.recall - 0.2 and dropped.precision > 0.9  # coverage, not quality
    assert dropped.frechet_distance > 2 * floor.frechet_distance
    assert one_shape.frechet_distance > 10 * floor.frechet_distance
    assert one_shape.kid > 5 * one_shape.kid_std and one_shape.kid > 10 * abs(floor.kid)
    assert one_shape.recall < 0.5
    assert blurred.frechet_distance > 2 * floor.frechet_distance


def test_report_files_are_complete_and_self_contained(ground_truth_evaluation, tmp_path):
    paths = write_report(ground_truth_evaluation, tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["models"][0]["scores"]["overall"] >= 0.99
    assert len(data["models"][0]["images"]) == 2 * len(get_suite(SUITE))
    assert data["floors"]["64"]["frechet_distance"] > 0
    assert [p["value"] for p in data["sweeps"]["guidance"]] == [1.0]
    for category in CATEGORIES:
        assert (tmp_path / "grids" / "0-model" / f"{category}.png").is_file()
    assert Image.open(tmp_path / "plots" / "score_vs_guidance.png").size[0] > 400
    markdown = paths["markdown"].read_text()
    assert "| overall |" in markdown and "grids/0-model/position.png" in markdown
    page = paths["html"].read_text()
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 7 and all(s.startswith("data:image/png;base64,") for s in sources)


def test_mean_rate_interval_closed_form():
    # One group: add 2 passes and 2 failures (Agresti-Coull with z^2 ~ 4).
    lo, hi = mean_rate_interval({"a": [True] * 50 + [False] * 50})
    half = 1.959964 * np.sqrt(0.25 / 104)
    assert (lo, hi) == pytest.approx((0.5 - half, 0.5 + half))
    lo, hi = mean_rate_interval({"a": [True] * 10, "b": [True] * 10})
    assert hi == 1.0 and 0.8 < lo < 1.0  # a width even when every image passed


def test_parse_sweep():
    assert parse_sweep("steps=5,10, 20,10") == ("steps", [5, 10, 20])
    assert parse_sweep("guidance=1,3.5") == ("guidance", [1.0, 3.5])
    assert parse_sweep("sampler=DDIM,dpm++2m") == ("sampler", ["ddim", "dpm++2m"])
    assert parse_sweep("layout=on,OFF") == ("layout", [True, False])
    for bad, message in [("steps", "KEY="), ("seed=1,2", "KEY="), ("steps=0", ">= 1"),
                         ("steps=", "no values"), ("guidance=nan", "finite"),
                         ("sampler=plms", "unknown sampler"), ("layout=yes", "on or off")]:
        with pytest.raises(ValueError, match=message):
            parse_sweep(bad)
    assert SamplingSettings().with_value("steps", 5).num_steps == 5
    off = SamplingSettings().with_value("layout", False)
    assert not off.layout and off.value_of("layout") == "off" and "no layout" in off.label()


def test_without_features_the_report_has_scores_only(tmp_path):
    evaluation = evaluate([GroundTruthRenderer()], suite="validation-shapes",
                          images_per_prompt=1, features=None, sweeps={"steps": [10, 20]},
                          progress=False)
    assert evaluation.models[0].run.distribution is None and not evaluation.references
    assert len(evaluation.sweeps["steps"]) == 2  # 20 is the base run, reused
    assert evaluation.sweeps["steps"][1] is evaluation.models[0].run
    paths = write_report(evaluation, tmp_path)
    markdown = paths["markdown"].read_text()
    assert "Distribution metrics" not in markdown and "| overall |" in markdown
    assert json.loads(paths["json"].read_text())["features"] is None


def test_a_paraphrase_suite_is_rendered_and_reported_from_its_canonical_forms(tmp_path):
    para, base = get_suite("validation-shapes-para"), get_suite("validation-shapes")
    # the real renders follow the canonical prompts: the same as the canonical suite's
    for a, b in zip(reference_images(para[::9], 1, "validation", REFERENCE_SEED_OFFSET, 64),
                    reference_images(base[::9], 1, "validation", REFERENCE_SEED_OFFSET, 64),
                    strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
    evaluation = evaluate([paraphrase_reader("validation-shapes-para")],
                          suite="validation-shapes-para", images_per_prompt=1, features=None,
                          progress=False)
    assert evaluation.models[0].run.report.scores["overall"] >= 0.99
    paths = write_report(evaluation, tmp_path)
    markdown = paths["markdown"].read_text()
    assert "## Prompts" in markdown and "base + 9000000 + 1000 i + j" in markdown
    assert f"| {para[0].prompt} | {para[0].canonical} | 1/1 |" in markdown
    images = json.loads(paths["json"].read_text())["models"][0]["images"]
    assert (images[0]["prompt"], images[0]["canonical"]) == (para[0].prompt, para[0].canonical)
    assert "## Prompts" not in write_report(
        evaluate([GroundTruthRenderer()], suite="validation-shapes", images_per_prompt=1,
                 features=None, progress=False), tmp_path / "canonical")["markdown"].read_text()
