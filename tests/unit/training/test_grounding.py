"""The grounding loss (pictor.training.grounding): which words name which object, the object
masks rebuilt from shapes-world scenes against the renderer's own pixels, closed forms of the
token loss, and the recorded cross-attention against the fused attention it replaces."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pictor.data.captions import COLOR_WORDS, canonical_caption
from pictor.data.loader import open_dataset
from pictor.data.shapes import (
    BACKGROUND_RGB,
    CATEGORIES,
    COLORS,
    parse_prompt,
    render_scene_array,
    sample_prompt_and_scene,
)
from pictor.data.suites import all_prompts
from pictor.data.synth import example_caption, example_rng, synthesize
from pictor.networks.layers import CrossAttention
from pictor.training.grounding import (
    build_grounding_table,
    centroid_loss,
    grounding_loss,
    object_words,
    record_cross_attention,
    scene_masks,
)


def _words(caption: str, words: str = "all") -> list[tuple[str, int]]:
    return [(caption[a:b], e) for a, b, e in object_words(caption, words)]


def test_object_words_name_each_object_in_caption_order():
    assert _words("a red circle") == [("red", 0), ("circle", 0)]
    assert _words("a star") == [("star", 0)]
    assert _words("three stars") == [("stars", 0)]
    assert _words("a square and a triangle") == [("square", 0), ("triangle", 1)]
    assert _words("an orange star and a blue square") == [
        ("orange", 0), ("star", 0), ("blue", 1), ("square", 1)]
    # the same shape twice: the cursor keeps the second "circle" for the second object
    assert _words("a red circle to the left of a blue circle") == [
        ("red", 0), ("circle", 0), ("blue", 1), ("circle", 1)]
    # training.grounding_words=color: the colour words only, still bound to their objects
    assert _words("an orange star and a blue square", "color") == [("orange", 0), ("blue", 1)]
    assert _words("a square and a triangle", "color") == []
    assert _words("three stars", "color") == []
    with pytest.raises(ValueError, match="grounding words must be one of"):
        object_words("a red circle", "shapes")
    with pytest.raises(ValueError, match="unexpected word"):
        object_words("a red blob")


@pytest.mark.parametrize("category", ["colors", "two_object", "color_attr", "counting",
                                      "position"])
def test_masks_at_full_resolution_are_the_rendered_objects(category):
    for seed in range(5):
        caption, scene = sample_prompt_and_scene(category, example_rng("train", seed))
        masks = scene_masks(caption, scene, 64)                         # (2, 64, 64)
        image = render_scene_array(scene).astype(np.int32)              # (64, 64, 3)
        drawn = np.any(image != np.asarray(BACKGROUND_RGB), axis=-1)
        # every drawn pixel belongs to exactly the masks' support, and masks never overlap
        assert np.array_equal(masks.sum(0) > 0, drawn)
        assert masks.max() <= 1.0 and (masks[0] * masks[1]).max() == 0.0
        total = sum(float(np.asarray(_coverage(s)).sum()) for s in scene.shapes)
        assert masks.sum() == pytest.approx(total, rel=1e-6)
        # a named colour is the colour of the pixels fully inside that entity's mask
        for entity, obj in enumerate(_parsed_objects(caption)):
            if obj.color is not None:
                inside = image[masks[entity] == 1.0]
                assert (inside == np.asarray(COLORS[obj.color])).all()


def _coverage(spec):
    from pictor.data.shapes import shape_coverage
    return shape_coverage(spec.shape, spec.size_px)


def _parsed_objects(caption):
    from pictor.data.shapes import parse_prompt
    return parse_prompt(caption).objects


def test_masks_are_area_averages_at_lower_resolution():
    caption, scene = sample_prompt_and_scene("position", example_rng("train", 3))
    full = scene_masks(caption, scene, 64)
    low = scene_masks(caption, scene, 16)
    assert low.shape == (2, 16, 16)
    assert np.allclose(low, full.reshape(2, 16, 4, 16, 4).mean(axis=(2, 4)))
    with pytest.raises(ValueError, match="does not divide"):
        scene_masks(caption, scene, 12)


@pytest.fixture(scope="module")
def tokenizer():
    from pictor.text.encoders import load_tokenizer
    return load_tokenizer("minilm")


def test_table_of_a_synth_folder(tmp_path, tokenizer):
    data = tmp_path / "shapes"
    synthesize(data, 24, seed=0, workers=1, progress=False)
    meta = data / "metadata.jsonl"
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    records[5]["text"] = "a red circle"  # an edited caption no longer matches its scene
    records[7]["text"] = "a photo of shapes"  # nor does one outside the caption grammar
    meta.write_text("".join(json.dumps(r) + "\n" for r in records))
    dataset = open_dataset(data)
    lines: list[str] = []
    table = build_grounding_table(dataset, tokenizer, max_length=32, resolution=16,
                                  log=lines.append)
    assert table.skipped == 2 and "22 of 24 examples" in lines[0]
    assert (table.tokens[5] == -1).all() and (table.tokens[7] == -1).all()
    for i, rec in enumerate(records):
        if i in (5, 7):
            continue
        ids = tokenizer(rec["text"])["input_ids"]
        used = table.tokens[i] >= 0
        words = {}
        for pos, ent in zip(table.tokens[i][used].tolist(), table.entity[i][used].tolist(),
                            strict=True):
            words.setdefault(ent, []).append(tokenizer.convert_ids_to_tokens(ids[pos]))
        expected = {}
        for a, b, ent in object_words(rec["text"]):
            expected.setdefault(ent, []).extend(tokenizer.tokenize(rec["text"][a:b]))
        assert words == expected, rec["text"]
        _, scene = sample_prompt_and_scene(rec["category"], example_rng("train", rec["seed"]))
        want = np.rint(scene_masks(rec["text"], scene, 16) * 255).astype(np.uint8)
        assert np.array_equal(table.masks[i].numpy(), want)


def _grounded_tokens(table, i, ids, tokenizer) -> dict[int, list[str]]:
    """entity -> the word pieces the table grounds to it in row i."""
    words: dict[int, list[str]] = {}
    used = table.tokens[i] >= 0
    for pos, ent in zip(table.tokens[i][used].tolist(), table.entity[i][used].tolist(),
                        strict=True):
        words.setdefault(ent, []).append(tokenizer.convert_ids_to_tokens(ids[pos]))
    return words


@pytest.mark.parametrize("words", ["all", "color"])
def test_table_of_a_paraphrased_synth_folder(tmp_path, tokenizer, words):
    """Token pairs point at the paraphrase's own words (synonyms included) and the masks are
    the canonical data set's: the same seeds give the same scenes."""
    synthesize(tmp_path / "canonical", 60, seed=1, workers=1, progress=False)
    synthesize(tmp_path / "para", 60, seed=1, workers=1, progress=False, captions="paraphrase")
    kwargs = dict(max_length=32, resolution=16, words=words, log=lambda *_: None)
    canonical = build_grounding_table(open_dataset(tmp_path / "canonical"), tokenizer, **kwargs)
    table = build_grounding_table(open_dataset(tmp_path / "para"), tokenizer, **kwargs)
    assert table.skipped == canonical.skipped == 0
    assert torch.equal(table.masks, canonical.masks)
    records = [json.loads(line) for line in (tmp_path / "para" / "metadata.jsonl").open()]
    synonyms = set()
    for i, rec in enumerate(records):
        caption = example_caption(rec["canonical"], "paraphrase", rec["seed"])
        assert caption.text == rec["text"]
        expected: dict[int, list[str]] = {}
        for span in caption.spans:
            if words == "all" or span.kind == "color":
                expected.setdefault(span.entity, []).extend(
                    tokenizer.tokenize(rec["text"][span.start:span.end]))
            if span.kind == "color":  # entity = the object's index in the canonical caption
                color = parse_prompt(rec["canonical"]).objects[span.entity].color
                assert rec["text"][span.start:span.end].lower() in COLOR_WORDS[color].train
        ids = tokenizer(rec["text"])["input_ids"]
        assert _grounded_tokens(table, i, ids, tokenizer) == expected, rec["text"]
        synonyms |= {t for pieces in expected.values() for t in pieces}
    assert synonyms & {"crimson", "disc", "block", "cobalt", "jade", "turquoise"}
    # no caption loses pairs to a fixed width: the table widens when a caption needs it
    used = (table.tokens >= 0).sum(1)
    assert table.tokens.shape[1] == max(8, int(used.max()))


def test_table_skips_records_whose_caption_is_not_what_the_seed_gives(tmp_path, tokenizer):
    synthesize(tmp_path / "d", 8, seed=2, workers=1, progress=False, captions="mix")
    meta = tmp_path / "d" / "metadata.jsonl"
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    table = build_grounding_table(open_dataset(tmp_path / "d"), tokenizer, max_length=32,
                                  resolution=16, log=lambda *_: None)
    assert table.skipped == 0
    records[0]["text"] = records[0]["text"] + " and nothing else"  # edited text
    records[1]["captions"] = "paraphrase-v0"  # another caption language version
    records[2]["canonical"] = "a red circle"  # canonical caption not the seed's
    for r in records[3:5]:  # written before captions were recorded: canonical assumed
        r["text"] = r.pop("canonical")
        del r["captions"]
    meta.write_text("".join(json.dumps(r) + "\n" for r in records))
    edited = build_grounding_table(open_dataset(tmp_path / "d"), tokenizer, max_length=32,
                                   resolution=16, log=lambda *_: None)
    assert edited.skipped == 3
    assert all((edited.tokens[i] == -1).all() for i in range(3))
    assert torch.equal(edited.masks[3:], table.masks[3:])
    assert all((edited.tokens[i] >= 0).any() for i in range(3, 8))


def test_object_words_are_the_canonical_captions_spans():
    for category in CATEGORIES:
        for prompt in all_prompts(category):
            spans = canonical_caption(parse_prompt(prompt)).spans
            assert object_words(prompt) == [(a, b, e) for a, b, e, _ in spans]
    assert object_words(" A red circle.") == [(3, 6, 0), (7, 13, 0)]
    with pytest.raises(ValueError, match="write 'a red circle'"):
        object_words("a  red circle")


def test_table_needs_shapes_world_ground_truth(tmp_path, tokenizer):
    data = tmp_path / "shapes"
    synthesize(data, 4, seed=0, workers=1, progress=False)
    meta = data / "metadata.jsonl"
    records = [json.loads(line) for line in meta.read_text().splitlines()]
    meta.write_text("".join(json.dumps({"file_name": r["file_name"], "text": r["text"]}) + "\n"
                            for r in records))
    with pytest.raises(ValueError, match="grounding_loss_weight"):
        build_grounding_table(open_dataset(data), tokenizer, max_length=32, resolution=16)


# ----------------------------------------------------------------------------------------------
# The loss
# ----------------------------------------------------------------------------------------------


def _square_mask(side: int, top: int, left: int, size: int) -> torch.Tensor:
    m = torch.zeros(side, side)
    m[top:top + size, left:left + size] = 1.0
    return m


def _two_objects():
    """8x8 map, 5 tokens: object 0 a 4x4 square at the top left named by token 1, object 1 a
    2x2 square at (4, 4) named by token 3, one unused pair; and attention that puts each
    token's weight uniformly on its own object."""
    side, length = 8, 5
    masks = torch.stack([_square_mask(side, 0, 0, 4), _square_mask(side, 4, 4, 2)])[None]
    tokens = torch.tensor([[1, 3, -1]])
    entity = torch.tensor([[0, 1, 0]])
    inside = torch.zeros(1, side * side, length)
    inside[0, :, 1] = masks[0, 0].flatten() / masks[0, 0].sum()
    inside[0, :, 3] = masks[0, 1].flatten() / masks[0, 1].sum()
    return side, length, masks, tokens, entity, inside


def test_loss_is_zero_when_attention_stays_in_the_mask_and_closed_form_when_uniform():
    side, length, masks, tokens, entity, inside = _two_objects()
    assert grounding_loss([inside], tokens, entity, masks).item() == pytest.approx(0.0, abs=1e-7)
    uniform = torch.full((1, side * side, length), 1.0 / (side * side))
    want = ((1 - 16 / 64) ** 2 + (1 - 4 / 64) ** 2) / 2
    assert grounding_loss([uniform], tokens, entity, masks).item() == pytest.approx(want)
    # all attention outside: 1 per pair
    outside = torch.zeros(1, side * side, length)
    outside[0, -1, 1] = 1.0
    outside[0, 0, 3] = 1.0
    assert grounding_loss([outside], tokens, entity, masks).item() == pytest.approx(1.0)
    # layers are averaged; a 4x4 layer sees the area-averaged mask
    coarse = torch.full((1, 16, length), 1.0 / 16)
    both = grounding_loss([uniform, coarse], tokens, entity, masks).item()
    assert both == pytest.approx(want)  # area shares do not change under area averaging


def test_loss_skips_dropped_captions_and_unused_pairs_but_keeps_a_graph():
    probs = torch.full((2, 16, 4), 1 / 16, requires_grad=True)
    masks = torch.zeros(2, 2, 4, 4)
    masks[:, 0, :2, :2] = 1.0
    tokens = torch.tensor([[1, -1], [2, -1]])
    entity = torch.zeros(2, 2, dtype=torch.int64)
    one = grounding_loss([probs], tokens, entity, masks, keep=torch.tensor([True, False]))
    assert one.item() == pytest.approx((1 - 4 / 16) ** 2)
    none = grounding_loss([probs], tokens, entity, masks, keep=torch.tensor([False, False]))
    assert none.item() == 0.0
    none.backward()  # a graph, so the training step's backward works on such a batch
    assert probs.grad is not None and probs.grad.abs().sum() == 0


def test_centroid_loss_closed_forms():
    """Image coordinates in [-1, 1]: pixel centres of an 8x8 map are at (i + 0.5) / 4 - 1."""
    side, length, masks, tokens, entity, inside = _two_objects()
    # mask centres: object 0 covers pixels 0-3 -> (-0.5, -0.5); object 1 pixels 4-5 -> (0.25, 0.25)
    assert centroid_loss([inside], tokens, entity, masks).item() == pytest.approx(0.0, abs=1e-7)
    # uniform attention is centred at (0, 0): squared distances 0.5 and 0.125, mean 0.3125
    uniform = torch.full((1, side * side, length), 1.0 / (side * side))
    assert centroid_loss([uniform], tokens, entity, masks).item() == pytest.approx(0.3125)
    # attention on one pixel (row 7, col 0): centre (-0.875, 0.875)
    corner = torch.zeros(1, side * side, length)
    corner[0, 7 * side, :] = 1.0
    want = ((-0.875 + 0.5) ** 2 + (0.875 + 0.5) ** 2 + (-0.875 - 0.25) ** 2
            + (0.875 - 0.25) ** 2) / 2
    assert centroid_loss([corner], tokens, entity, masks).item() == pytest.approx(want)
    # a 4x4 layer sees the area-averaged masks, whose centres are the same
    coarse = torch.full((1, 16, length), 1.0 / 16)
    assert centroid_loss([uniform, coarse], tokens, entity, masks).item() == pytest.approx(0.3125)
    # empty masks, dropped captions and unused pairs add nothing, and a graph remains
    probs = uniform.clone().requires_grad_(True)
    none = centroid_loss([probs], tokens, entity, torch.zeros_like(masks))
    assert none.item() == 0.0
    none.backward()
    assert probs.grad is not None and probs.grad.abs().sum() == 0
    assert centroid_loss([uniform], tokens, entity, masks, keep=torch.tensor([False])).item() == 0


# ----------------------------------------------------------------------------------------------
# Recording the cross-attention
# ----------------------------------------------------------------------------------------------


def test_recorded_cross_attention_matches_the_fused_path():
    torch.manual_seed(0)
    attn = CrossAttention(16, 12, num_heads=2)
    x, ctx = torch.randn(3, 64, 16), torch.randn(3, 5, 12)
    mask = torch.tensor([[True] * 5, [True, True, True, False, False], [False] * 5])
    fused = attn(x, ctx, mask)
    with record_cross_attention(attn, min_resolution=8) as records:
        recorded = attn(x, ctx, mask)
        attn(x[:, :16], ctx, mask)  # a 4x4 map: below min_resolution, not recorded
    assert torch.allclose(recorded, fused, atol=1e-5)
    assert len(records) == 1 and records[0].shape == (3, 64, 5)
    probs = records[0]
    assert torch.allclose(probs[0].sum(-1), torch.ones(64))
    assert torch.allclose(probs[1].sum(-1), torch.ones(64)) and probs[1][:, 3:].abs().max() == 0
    assert probs[2].abs().max() == 0 and torch.isfinite(recorded).all()  # no key: no attention
    assert attn.record is None  # the recorder is detached on exit
    # under bf16 autocast the probabilities stay float32, and gradients reach q and kv
    with torch.autocast("cpu", dtype=torch.bfloat16), record_cross_attention(attn) as records:
        attn(x, ctx, mask)
    assert records[0].dtype == torch.float32
    records[0][:, :, 0].sum().backward()
    assert attn.q.weight.grad.abs().sum() > 0 and attn.kv.weight.grad.abs().sum() > 0
