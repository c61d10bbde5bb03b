"""The shapes world against its spec: tables, geometry, placement, captions and the parser."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest

from pictor.data.shapes import (
    BACKGROUND_RGB,
    CATEGORIES,
    COLORS,
    RELATIONS,
    SHAPES,
    ParsedPrompt,
    PromptObject,
    Scene,
    ShapeSpec,
    caption_for,
    format_prompt,
    parse_mix,
    parse_prompt,
    relation_offset_px,
    render_scene,
    render_scene_array,
    sample_prompt_and_scene,
    sample_training_example,
    shape_coverage,
    validate_mix,
    validate_scene,
)
from pictor.data.suites import all_prompts
from pictor.data.synth import example_rng

SAMPLES_PER_CATEGORY = 300


def samples(category: str, count: int = SAMPLES_PER_CATEGORY):
    for i in range(count):
        yield sample_prompt_and_scene(category, example_rng("test", 5_000_000 + i))


def assert_caption_describes(prompt: str, scene: Scene) -> None:
    """The parsed prompt holds for the scene's ground truth, with the render rules."""
    parsed = parse_prompt(prompt)
    named = parsed.category in ("colors", "color_attr", "position")
    wanted = Counter((o.shape, o.color if named else None) for o in parsed.expected_objects())
    have = Counter((s.shape, s.color if named else None) for s in scene.shapes)
    assert wanted == have, (prompt, scene)
    if parsed.category == "position":
        a, b = scene.shapes
        assert (PromptObject(a.shape, a.color), PromptObject(b.shape, b.color)) == parsed.objects
        assert relation_offset_px(parsed.relation, a.center, b.center) >= 12


def test_tables_follow_the_spec():
    assert BACKGROUND_RGB == (32, 32, 32)
    assert COLORS == {
        "red": (220, 40, 40),
        "orange": (245, 140, 20),
        "yellow": (240, 220, 40),
        "green": (40, 180, 70),
        "cyan": (30, 200, 220),
        "blue": (40, 90, 230),
        "purple": (150, 60, 210),
        "white": (235, 235, 235),
    }
    assert SHAPES == ("circle", "square", "triangle", "star")
    assert RELATIONS == ("to the left of", "to the right of", "above", "below")
    assert len(CATEGORIES) == 6


@pytest.mark.parametrize("size_px", [16, 19, 24])
def test_coverage_matches_closed_form_areas(size_px):
    s = size_px
    outer = s / (2 * math.sin(math.radians(72)))
    star_area = 5 * outer * (0.45 * outer) * math.sin(math.radians(36))  # 10 triangles R r sin/2
    expected = {
        "circle": math.pi * s**2 / 4,
        "square": s**2,
        "triangle": s**2 / 2,
        "star": star_area,
    }
    for shape, area in expected.items():
        coverage = shape_coverage(shape, s)
        assert coverage.shape[1] == s
        assert coverage.min() >= 0 and coverage.max() == 1
        assert coverage.sum() == pytest.approx(area, rel=0.01), shape


def test_shape_geometry():
    s = 20
    triangle = shape_coverage("triangle", s)
    rows = triangle.sum(axis=1)
    assert np.all(np.diff(rows) > 0)  # widens downwards: apex at the top, base at the bottom
    assert rows[-1] == pytest.approx(s, abs=0.5)
    mass_y = (rows * (np.arange(s) + 0.5)).sum() / rows.sum()
    assert mass_y == pytest.approx(2 * s / 3, abs=0.1)  # centroid of a triangle of height s
    star = shape_coverage("star", s)
    height = s * (1 + math.cos(math.radians(36))) / (2 * math.sin(math.radians(72)))
    assert star.shape == (math.ceil(height), s)
    columns = star.sum(axis=0)
    np.testing.assert_allclose(columns, columns[::-1], atol=1e-6)  # upright: mirror symmetric
    star_rows = star.sum(axis=1)[star.sum(axis=1) > 0.05]
    assert star_rows[0] < 1 and star_rows.argmax() < len(star_rows) / 2  # apex up, arms above
    circle = shape_coverage("circle", s)
    np.testing.assert_allclose(circle, circle.T, atol=1e-6)


def test_render_is_flat_colour_on_background():
    spec = ShapeSpec("square", "orange", 10, 12, 17)
    other = ShapeSpec("circle", "cyan", 40, 40, 20)
    image = render_scene_array(Scene((spec, other)))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert (image[12:29, 10:27] == COLORS["orange"]).all()
    assert (image[50, 50] == COLORS["cyan"]).all()
    mask = np.ones((64, 64), bool)
    mask[12:29, 10:27] = False
    mask[40:60, 40:60] = False
    assert (image[mask] == BACKGROUND_RGB).all()
    edge = image[40, 49]  # top edge of the circle: anti-aliased, between the two colours
    assert 0 < np.abs(edge.astype(int) - BACKGROUND_RGB).max() < 200
    pil = render_scene(Scene((spec,)))
    assert pil.size == (64, 64) and pil.mode == "RGB"


@pytest.mark.parametrize("category", CATEGORIES)
def test_sampled_scenes_follow_placement_rules_and_captions_are_true(category):
    counts = Counter()
    for prompt, scene in samples(category):
        validate_scene(scene)  # sizes, 2 px margin, >= 3 px between boxes, 1..4 shapes
        assert_caption_describes(prompt, scene)
        assert parse_prompt(prompt).category == category
        assert format_prompt(parse_prompt(prompt)) == prompt
        drawn = (render_scene_array(scene) != BACKGROUND_RGB).any(axis=-1)  # (64, 64)
        union = np.zeros_like(drawn)
        for spec in scene.shapes:  # each shape's pixels stay inside its own box
            alone = (render_scene_array(Scene((spec,))) != BACKGROUND_RGB).any(axis=-1)
            left, top, right, bottom = spec.bbox
            inside = np.zeros_like(alone)
            inside[top : math.ceil(bottom), left : math.ceil(right)] = True
            assert not (alone & ~inside).any()
            union |= alone
        assert (drawn == union).all()
        counts[len(scene.shapes)] += 1
    if category == "counting":
        assert set(counts) == {2, 3, 4}


def test_every_shape_size_colour_and_relation_occurs():
    seen = Counter()
    for category in CATEGORIES:
        for prompt, scene in samples(category, 200):
            for spec in scene.shapes:
                seen.update([spec.shape, spec.color, spec.size_px])
            if category == "position":
                seen[parse_prompt(prompt).relation] += 1
    assert set(SHAPES) | set(COLORS) | set(range(16, 25)) | set(RELATIONS) <= set(seen)


def test_sampling_is_deterministic():
    a = [sample_prompt_and_scene("position", example_rng("test", 7)) for _ in range(3)]
    b = [sample_prompt_and_scene("position", example_rng("test", 7)) for _ in range(3)]
    assert a == b
    assert sample_prompt_and_scene("position", example_rng("test", 8)) != a[0]


def test_articles():
    assert caption_for(Scene((ShapeSpec("star", "orange", 5, 5, 16),)), "colors") == (
        "an orange star"
    )
    assert (
        format_prompt(
            ParsedPrompt(
                "color_attr", (PromptObject("circle", "red"), PromptObject("star", "orange")), 2
            )
        )
        == "a red circle and an orange star"
    )
    assert format_prompt(ParsedPrompt("counting", (PromptObject("triangle"),), 3)) == (
        "three triangles"
    )


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_prompt_of_the_grammar_parses_back(category):
    for prompt in all_prompts(category):
        parsed = parse_prompt(prompt)
        assert parsed.category == category
        assert format_prompt(parsed) == prompt


def test_parse_structure():
    parsed = parse_prompt("an orange star to the left of a blue circle")
    assert parsed == ParsedPrompt(
        "position",
        (PromptObject("star", "orange"), PromptObject("circle", "blue")),
        2,
        "to the left of",
    )
    assert parse_prompt("four squares") == ParsedPrompt("counting", (PromptObject("square"),), 4)
    assert parse_prompt("four squares").expected_objects() == [PromptObject("square")] * 4
    assert parse_prompt("  A Red Circle. ").category == "colors"  # case, spaces, final period


@pytest.mark.parametrize(
    "prompt, word",
    [
        ("a hexagon", "hexagon"),
        ("a red hexagon", "hexagon"),
        ("a magenta circle", "magenta"),
        ("a orange star", "'a'"),
        ("an red circle", "'an'"),
        ("five circles", "five"),
        ("two circle", "circle"),
        ("three stars please", "please"),
        ("a circle and a circle", "circle"),
        ("a red circle and a red square", "red"),
        ("a circle and a red square", "circle"),
        ("a red circle above a square", "square"),
        ("a red circle to the top of a blue star", "top"),
        ("a red circle next to a blue star", "next"),
        ("a red circle beside", "beside"),
        ("the red circle", "the"),
    ],
)
def test_bad_prompts_name_the_offending_word(prompt, word):
    with pytest.raises(ValueError, match=word):
        parse_prompt(prompt)


def test_bad_prompt_edge_cases():
    for prompt in ("", "   "):
        with pytest.raises(ValueError, match="empty"):
            parse_prompt(prompt)
    with pytest.raises(ValueError, match="ends too early"):
        parse_prompt("a red")


def test_caption_for_refuses_false_captions():
    a = ShapeSpec("circle", "red", 4, 20, 16)
    b = ShapeSpec("square", "blue", 40, 20, 16)
    scene = Scene((a, b))
    assert caption_for(scene, "position", "to the left of") == (
        "a red circle to the left of a blue square"
    )
    with pytest.raises(ValueError, match="to the right of"):
        caption_for(scene, "position", "to the right of")
    with pytest.raises(ValueError, match="above"):
        caption_for(scene, "position", "above")  # same height: offset 0 < 12
    with pytest.raises(ValueError, match="1 shape"):
        caption_for(scene, "colors")
    with pytest.raises(ValueError, match="one kind"):
        caption_for(scene, "counting")
    same = Scene((a, ShapeSpec("circle", "blue", 40, 20, 16)))
    with pytest.raises(ValueError, match="different shapes"):
        caption_for(same, "two_object")
    assert caption_for(same, "counting") == "two circles"


def test_validate_scene_rejects_rule_breaks():
    ok = ShapeSpec("square", "red", 2, 2, 16)
    with pytest.raises(ValueError, match="margin"):
        validate_scene(Scene((ShapeSpec("square", "red", 1, 2, 16),)))
    with pytest.raises(ValueError, match="margin"):
        validate_scene(Scene((ShapeSpec("square", "red", 40, 40, 24),)))  # right edge 64 > 62
    with pytest.raises(ValueError, match="size_px"):
        validate_scene(Scene((ShapeSpec("square", "red", 2, 2, 25),)))
    with pytest.raises(ValueError, match="3 px"):
        validate_scene(Scene((ok, ShapeSpec("circle", "blue", 20, 2, 16))))  # 2 px apart
    validate_scene(Scene((ok, ShapeSpec("circle", "blue", 21, 2, 16))))  # 3 px apart: fine
    with pytest.raises(ValueError, match="colour"):
        validate_scene(Scene((ShapeSpec("square", "pink", 2, 2, 16),)))
    with pytest.raises(ValueError, match="1 to 4"):
        validate_scene(Scene(()))


def test_training_mixes():
    assert parse_mix("colors=2, position=1") == {"colors": 2.0, "position": 1.0}
    assert validate_mix({"colors": 2, "position": 2}) == {"colors": 0.5, "position": 0.5}
    assert set(validate_mix(None)) == set(CATEGORIES)
    for bad, word in [
        ("colours=1", "colours"),
        ("colors", "CATEGORY=WEIGHT"),
        ("colors=x", "'x'"),
        ("colors=-1", "colors"),
        ("colors=0", "sum to 0"),
    ]:
        with pytest.raises(ValueError, match=word):
            parse_mix(bad)
    rng = example_rng("test", 99)
    seen = Counter()
    for _ in range(300):
        category, prompt, scene = sample_training_example(rng, {"counting": 1, "position": 3})
        assert_caption_describes(prompt, scene)
        seen[category] += 1
    assert set(seen) == {"counting", "position"} and seen["position"] > seen["counting"]
