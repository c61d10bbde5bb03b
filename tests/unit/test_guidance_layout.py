"""Layout guidance (pictor.guidance): the planner reads relations and counts from prompts; the bias has its closed
form; the network applies it (a dominant bias hands a query to its token, padding stays masked,
the block pools it to its resolution)."""

from __future__ import annotations

import math

import pytest
import torch

from pictor.guidance import (
    LAYOUT_RULES,
    LayoutSettings,
    count_spans,
    layout_bias,
    layout_rules,
    plan_layout,
    prompt_layout_bias,
)
from pictor.networks.layers import CrossAttention, TransformerBlock

PROMPT = "A red circle to the left of a blue square"


def words(prompt, plan):
    return [[prompt[a:b] for a, b in obj.spans] for obj in plan.objects]


@pytest.mark.parametrize("relation,direction", [
    ("to the left of", (-1, 0)), ("to the right of", (1, 0)), ("above", (0, -1)),
    ("below", (0, 1)), ("left of", (-1, 0)), ("on top of", (0, -1)), ("under", (0, 1)),
])
def test_a_relation_places_the_two_phrases_on_opposite_sides(relation, direction):
    prompt = f"a red circle {relation} a blue square."
    plan = plan_layout(prompt, "all", LayoutSettings(offset=0.4))
    assert plan.relation == relation
    assert words(prompt, plan) == [["red", "circle"], ["blue", "square"]]
    a, b = (obj.center for obj in plan.objects)
    assert a == pytest.approx((0.4 * direction[0], 0.4 * direction[1]))
    assert b == pytest.approx((-0.4 * direction[0], -0.4 * direction[1]))


def test_color_words_are_steered_when_a_phrase_has_them_else_its_content_words():
    plan = plan_layout(PROMPT, "color")
    assert words(PROMPT, plan) == [["red"], ["blue"]]
    prompt = "the cat above a big dog"
    assert words(prompt, plan_layout(prompt, "color")) == [["cat"], ["big", "dog"]]


@pytest.mark.parametrize("prompt", [
    "a red circle", "a red circle and a blue square", "to the left of a blue square",
    "a red circle to the left of", "a star above a circle below a square", "", "three stars",
])
def test_prompts_without_one_complete_relation_or_a_count_have_no_plan(prompt):
    assert plan_layout(prompt) is None


def test_unknown_word_choice_is_an_error():
    with pytest.raises(ValueError, match="layout words"):
        plan_layout(PROMPT, "nouns")


def test_bias_has_its_closed_form():
    settings = LayoutSettings(strength=7.0, offset=0.4, sigma=0.3)
    plan = plan_layout(PROMPT, "color", settings)
    # [CLS] a red circle to the left of a blue square [SEP]: "red" is token 2, "blue" token 9
    offsets = [(0, 0), (0, 1), (2, 5), (6, 12), (13, 15), (16, 19), (20, 24), (25, 27),
               (28, 29), (30, 34), (35, 41), (0, 0)]
    bias = layout_bias(plan, offsets, length=12, side=5, settings=settings)
    assert bias.shape == (1, 12, 5, 5)
    others = [i for i in range(12) if i not in (2, 9)]
    assert bias[0, others].abs().max() == 0
    # pixel centres of a 5x5 map: -0.8, -0.4, 0, 0.4, 0.8; "red" is centred at (x, y) = (-0.4, 0)
    assert float(bias[0, 2, 2, 1]) == pytest.approx(7.0)
    d2 = (0.8 + 0.4) ** 2 + 0.8 ** 2  # pixel (row 0, col 4) from (-0.4, 0)
    assert float(bias[0, 2, 0, 4]) == pytest.approx(7.0 * (2 * math.exp(-d2 / 0.18) - 1))
    torch.testing.assert_close(bias[0, 9], bias[0, 2].flip(-1))  # "blue" mirrored at (0.4, 0)


# [CLS] three red stars above a blue square [SEP]
COUNT_RELATION = "three red stars above a blue square"
COUNT_OFFSETS = [(0, 0), (0, 5), (6, 9), (10, 15), (16, 21), (22, 23), (24, 28), (29, 35), (0, 0)]


def test_count_words_are_found_as_words_and_numerals():
    prompt = "Three stars, 4 circles and twelve squares; someone, 1 or 13"
    assert [prompt[a:b] for a, b in count_spans(prompt)] == ["Three", "4", "twelve"]
    assert count_spans("a red circle to the left of a blue square") == ()


def test_layout_rules_name_what_runs():
    assert layout_rules(True) == LAYOUT_RULES == ("relation", "count")
    assert layout_rules(False) == layout_rules(None) == ()
    assert layout_rules(["count", "relation"]) == ("relation", "count")
    assert layout_rules("count") == ("count",)
    with pytest.raises(ValueError, match="unknown layout rule.*'relation', 'count'"):
        layout_rules(["size"])


def test_count_words_get_count_strength_at_every_pixel_on_top_of_the_relation():
    settings = LayoutSettings(strength=7.0, count_strength=3.0)
    both = prompt_layout_bias(COUNT_RELATION, COUNT_OFFSETS, 9, 4, LAYOUT_RULES, "color",
                              settings)
    relation = prompt_layout_bias(COUNT_RELATION, COUNT_OFFSETS, 9, 4, ["relation"], "color",
                                  settings)
    count = prompt_layout_bias(COUNT_RELATION, COUNT_OFFSETS, 9, 4, ["count"], "color", settings)
    plan = plan_layout(COUNT_RELATION, "color", settings)
    torch.testing.assert_close(relation, layout_bias(plan, COUNT_OFFSETS, 9, 4, settings))
    assert torch.equal(count[0, 1], torch.full((4, 4), 3.0))  # "three"
    assert count[0, [0, *range(2, 9)]].abs().max() == 0
    torch.testing.assert_close(both, relation + count)
    # no rule that applies: no bias at all (the plain network runs), and no tokenizing
    assert prompt_layout_bias("a red circle", [(0, 0), (0, 1), (2, 5), (6, 12), (0, 0)], 5, 4,
                              LAYOUT_RULES) is None
    assert prompt_layout_bias("a red circle", lambda: pytest.fail("tokenized"), 5, 4) is None
    torch.testing.assert_close(
        prompt_layout_bias(COUNT_RELATION, lambda: COUNT_OFFSETS, 9, 4, LAYOUT_RULES, "color",
                           settings), both)
    assert prompt_layout_bias("three stars", [(0, 0), (0, 5), (6, 11), (0, 0)], 4, 4,
                              ["relation"]) is None
    assert prompt_layout_bias("three stars", [(0, 0), (0, 5), (6, 11), (0, 0)], 4, 4,
                              LAYOUT_RULES, settings=LayoutSettings(count_strength=0)) is None
    with pytest.raises(ValueError, match="count strength"):
        LayoutSettings(count_strength=-1)


def test_a_dominant_bias_hands_every_query_to_its_token_and_padding_stays_masked():
    torch.manual_seed(0)
    attn = CrossAttention(16, 8, num_heads=2).eval()
    x, context = torch.randn(2, 6, 16), torch.randn(2, 4, 8)
    mask = torch.tensor([[True, True, True, False], [True, True, True, True]])
    bias = torch.zeros(2, 6, 4)
    bias[:, :, 1] = 1e4                   # every pixel to token 1
    bias[0, :, 3] = 2e4                   # a padding key: stays masked whatever its bias
    got = attn(x, context, mask, bias)
    v = attn.kv(context).chunk(2, dim=-1)[1]
    want = attn.out(v[:, 1:2].expand(2, 6, 16))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    zero = attn(x, context, mask, torch.zeros(2, 6, 4))
    torch.testing.assert_close(zero, attn(x, context, mask), atol=1e-6, rtol=1e-6)


def test_block_pools_a_finer_layout_to_its_resolution():
    torch.manual_seed(0)
    block = TransformerBlock(16, 8, num_heads=2).eval()
    x, context = torch.randn(1, 16, 4, 4), torch.randn(1, 3, 8)
    fine = torch.randn(1, 3, 8, 8) * 3
    coarse = torch.nn.functional.avg_pool2d(fine, 2)
    with torch.no_grad():
        torch.testing.assert_close(block(x, context, None, fine), block(x, context, None, coarse))
        assert not torch.allclose(block(x, context, None, coarse), block(x, context))
