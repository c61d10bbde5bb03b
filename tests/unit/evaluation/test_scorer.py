"""The shapes scorer against ground truth: fresh renders pass, false prompts fail.

Renders come from the `test` seed namespace, which no training run draws from (see
pictor.data.synth). The default suite checks 200 renders per category; the 1,000-per-category
acceptance check of the spec runs with `-m slow`.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from pictor.data.shapes import (
    CATEGORIES,
    COLORS,
    SHAPES,
    ParsedPrompt,
    PromptObject,
    Scene,
    ShapeSpec,
    flip_relation,
    format_prompt,
    parse_prompt,
    render_scene,
    render_scene_array,
    sample_prompt_and_scene,
)
from pictor.data.synth import example_rng
from pictor.evaluation.scorer import (
    SHAPE_PROTOTYPES,
    ScorerConfig,
    ScoreResult,
    aggregate,
    find_objects,
    score_batch,
    score_image,
)

FAST_RENDERS = 200
SLOW_RENDERS = 1000


def renders(category: str, count: int):
    """(prompt, scene, image) for `count` fresh renders of a category (test namespace)."""
    offset = 1_000_000 * CATEGORIES.index(category)
    for i in range(count):
        rng = example_rng("test", offset + i)
        prompt, scene = sample_prompt_and_scene(category, rng)
        yield prompt, scene, render_scene_array(scene)


def degrade(image: np.ndarray, seed: int, blur_sigma_px=0.6, noise_std=6.0) -> np.ndarray:
    """Gaussian blur (sigma in px) then additive Gaussian noise (0-255 scale), re-quantised."""
    rng = np.random.default_rng(seed)
    blurred = ndimage.gaussian_filter(image.astype(np.float64), sigma=(blur_sigma_px,) * 2 + (0,))
    noisy = blurred + rng.normal(0.0, noise_std, image.shape)
    return np.clip(np.rint(noisy), 0, 255).astype(np.uint8)


def _other(options, *exclude):
    return next(option for option in options if option not in exclude)


def negative_prompts(prompt: str) -> dict[str, str]:
    """False variants of a true prompt: colour swapped, object missing/added/replaced, relation
    flipped, as apply to its category (each still inside the grammar)."""
    p = parse_prompt(prompt)
    objs = p.objects
    out: dict[str, ParsedPrompt] = {}
    if p.category == "counting":
        shape = objs[0].shape
        out["count_plus_or_minus"] = ParsedPrompt(
            "counting", objs, p.count + 1 if p.count < 4 else p.count - 1
        )
        out["shape_replaced"] = ParsedPrompt(
            "counting", (PromptObject(_other(SHAPES, shape)),), p.count
        )
        if p.count == 2:
            out["object_missing"] = ParsedPrompt("single_object", (PromptObject(shape),), 1)
        return {kind: format_prompt(q) for kind, q in out.items()}

    first = objs[0]
    spare_shape = _other(SHAPES, *(o.shape for o in objs))
    spare_color = _other(COLORS, *(o.color for o in objs))
    with_color = first.color is not None
    added = PromptObject(spare_shape, spare_color if with_color else None)
    replaced = (PromptObject(spare_shape, first.color),) + objs[1:]
    out["shape_replaced"] = ParsedPrompt(p.category, replaced, p.count, p.relation)
    if len(objs) == 1:
        two = "color_attr" if with_color else "two_object"
        if with_color and added.color == first.color:
            added = PromptObject(spare_shape, _other(COLORS, first.color))
        out["object_added"] = ParsedPrompt(two, (first, added), 2)
        if with_color:
            out["color_swapped"] = ParsedPrompt(
                "colors", (PromptObject(first.shape, spare_color),), 1
            )
    else:
        one = "colors" if with_color else "single_object"
        out["object_missing"] = ParsedPrompt(one, (first,), 1)
        if with_color:
            recoloured = (PromptObject(first.shape, spare_color), objs[1])
            out["color_swapped"] = ParsedPrompt(p.category, recoloured, 2, p.relation)
            if first.color != objs[1].color:  # exchange the colours of the two objects
                exchanged = (
                    PromptObject(first.shape, objs[1].color),
                    PromptObject(objs[1].shape, first.color),
                )
                out["colors_exchanged"] = ParsedPrompt(p.category, exchanged, 2, p.relation)
        if p.category == "position":
            out["relation_flipped"] = ParsedPrompt("position", objs, 2, flip_relation(p.relation))
    return {kind: format_prompt(q) for kind, q in out.items()}


def pass_rates(category: str, count: int) -> dict[str, float]:
    """Pass rate of clean and degraded renders, rejection rate of each negative kind."""
    clean, degraded, rejected = [], [], {}
    for i, (prompt, _, image) in enumerate(renders(category, count)):
        clean.append(score_image(image, prompt).passed)
        degraded.append(score_image(degrade(image, seed=i), prompt).passed)
        for kind, negative in negative_prompts(prompt).items():
            rejected.setdefault(kind, []).append(not score_image(image, negative).passed)
    rates = {"clean": np.mean(clean), "degraded": np.mean(degraded)}
    rates.update({f"rejected:{kind}": np.mean(v) for kind, v in rejected.items()})
    return rates


@pytest.mark.parametrize(
    "count", [FAST_RENDERS, pytest.param(SLOW_RENDERS, marks=pytest.mark.slow)]
)
@pytest.mark.parametrize("category", CATEGORIES)
def test_renders_pass_and_false_prompts_fail(category, count):
    rates = pass_rates(category, count)
    print(category, count, {k: round(float(v), 4) for k, v in rates.items()})
    assert rates["clean"] >= 0.99, rates
    assert rates["degraded"] >= 0.97, rates
    negatives = {k: v for k, v in rates.items() if k.startswith("rejected:")}
    assert len(negatives) >= 2, negatives
    assert all(v >= 0.99 for v in negatives.values()), negatives


def test_negative_prompts_cover_every_kind():
    kinds = set()
    for category in CATEGORIES:
        for prompt, _, _ in renders(category, 20):
            for kind, negative in negative_prompts(prompt).items():
                assert negative != prompt
                parse_prompt(negative)  # inside the grammar
                kinds.add(kind)
    assert {"color_swapped", "object_missing", "object_added", "relation_flipped"} <= kinds


def test_found_objects_match_the_scene():
    for category in CATEGORIES:
        for _, scene, image in renders(category, 30):
            found = find_objects(image)
            assert len(found) == len(scene.shapes)
            for spec in scene.shapes:
                match = min(found, key=lambda o: np.hypot(*np.subtract(o.center, spec.center)))
                assert (match.shape, match.color) == (spec.shape, spec.color)
                # bbox of half coverage vs the true box: the star's short height and thin tips
                # move its measured centre by < 0.6 px; the other shapes' by at most 0.5 px.
                assert np.hypot(*np.subtract(match.center, spec.center)) <= 0.6


def test_prototypes_match_features_measured_on_renders():
    scales = np.asarray(ScorerConfig().feature_scales)
    features = {shape: [] for shape in SHAPES}
    for category in CATEGORIES:
        for i, (_, _, image) in enumerate(renders(category, 40)):
            for variant in (image, degrade(image, seed=i)):
                for obj in find_objects(variant):
                    features[obj.shape].append(obj.features)
    for shape, rows in features.items():
        mean = np.mean(rows, axis=0)
        assert np.all(np.abs(mean - SHAPE_PROTOTYPES[shape]) / scales < 0.6), (shape, mean)


def test_noise_specks_are_ignored_but_extra_shapes_count():
    prompt, scene, image = next(renders("colors", 1))
    speckled = image.copy()
    free = [(y, x) for y in range(2, 60, 6) for x in range(2, 60, 6)]
    free = [(y, x) for y, x in free if (image[y : y + 3, x : x + 3] == 32).all()][:5]
    for y, x in free:
        speckled[y : y + 3, x : x + 3] = 255  # 3 x 3 white specks: 9 px < min_area_px
    assert score_image(speckled, prompt).passed
    extra = Scene(scene.shapes + (ShapeSpec("square", "red", 0, 0, 16),))
    with_extra = render_scene_array(extra, validate=False)
    result = score_image(with_extra, prompt)
    assert not result.passed and "found 2" in result.reason


def test_touching_shapes_fail():
    a = ShapeSpec("square", "red", 10, 20, 16)
    b = ShapeSpec("circle", "blue", 26, 20, 16)  # boxes share an edge
    image = render_scene_array(Scene((a, b)), validate=False)
    assert not score_image(image, "a red square and a blue circle").passed
    apart = Scene((a, ShapeSpec("circle", "blue", 29, 20, 16)))  # 3 px gap: the spec's minimum
    assert score_image(render_scene_array(apart), "a red square and a blue circle").passed


def test_position_uses_the_four_pixel_rule():
    def scene_with_offset(dx: int) -> np.ndarray:
        a = ShapeSpec("circle", "red", 10, 2, 16)
        b = ShapeSpec("square", "blue", 10 + dx, 40, 16)
        return render_scene_array(Scene((a, b)))

    prompt = "a red circle to the left of a blue square"
    assert score_image(scene_with_offset(4), prompt).passed
    assert not score_image(scene_with_offset(3), prompt).passed
    assert score_image(scene_with_offset(0), "a red circle above a blue square").passed


def test_input_forms_and_background_shift():
    prompt, scene, image = next(renders("color_attr", 1))
    assert score_image(Image.fromarray(image), prompt).passed
    assert score_image(render_scene(scene).resize((128, 128), Image.NEAREST), prompt).passed
    shifted = np.clip(image.astype(int) + np.array([8, 4, -2]), 0, 255).astype(np.uint8)
    assert score_image(shifted, prompt).passed
    with pytest.raises(ValueError, match="float64"):
        score_image(image.astype(np.float64), prompt)


def test_bad_prompt_names_the_word():
    _, _, image = next(renders("colors", 1))
    with pytest.raises(ValueError, match="hexagon"):
        score_image(image, "a red hexagon")


def test_empty_and_unknown_images_fail():
    blank = np.full((64, 64, 3), 32, dtype=np.uint8)
    assert not score_image(blank, "a circle").passed
    bar = blank.copy()
    bar[30:34, 5:60] = COLORS["red"]  # a long thin bar is no shape of the world
    result = score_image(bar, "a red square")
    assert not result.passed and result.found[0].shape == "unknown"


def test_score_batch_and_aggregate():
    images, prompts = [], []
    for category in CATEGORIES:
        for prompt, _, image in renders(category, 2):
            images.append(image)
            prompts.append(prompt)
    prompts[0] = negative_prompts(prompts[0])["shape_replaced"]  # one single_object fails
    results = score_batch(images, prompts)
    scores = aggregate(results)
    assert scores["single_object"] == 0.5
    assert all(scores[c] == 1.0 for c in CATEGORIES[1:])
    assert scores["overall"] == pytest.approx((0.5 + 5) / 6)
    with pytest.raises(ValueError, match="pair"):
        score_batch(images, prompts[:-1])
    only_one = aggregate([ScoreResult(True, "ok", (), "counting", "two stars")])
    assert only_one == {"counting": 1.0, "overall": 1.0}
