"""The caption language (pictor.data.captions): a paraphrase names the canonical caption's scene
and nothing else, training and held-out phrasings never meet, and the generator is pinned."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from pictor.data.captions import (
    ATTRIBUTE_FORMS,
    CANONICAL_LABEL,
    CAPTION_LANGUAGE_VERSION,
    CLAUSES,
    COLOR_WORDS,
    CONJUNCTIONS,
    COUNT_PHRASES,
    FRAMES,
    PARAPHRASE_LABEL,
    RELATION_PHRASES,
    SHAPE_WORDS,
    SPLITS,
    STYLES,
    Caption,
    Phrasings,
    canonical_caption,
    caption_label,
    paraphrase,
    plural,
    rebuild_caption,
    sample_training_prompts,
    training_caption,
)
from pictor.data.shapes import (
    CATEGORIES,
    COLORS,
    COUNT_WORDS,
    RELATIONS,
    SHAPES,
    flip_relation,
    format_prompt,
    parse_prompt,
)
from pictor.data.suites import all_prompts

# Every slot of the language whose phrasings add words (STYLES is checked on its own).
SLOTS: dict[str, Phrasings] = {
    **{f"color {name}": p for name, p in COLOR_WORDS.items()},
    **{f"shape {name}": p for name, p in SHAPE_WORDS.items()},
    **{f"count {n}": p for n, p in COUNT_PHRASES.items()},
    **{f"relation {name}": p for name, p in RELATION_PHRASES.items()},
    "conjunction": CONJUNCTIONS, "attribute form": ATTRIBUTE_FORMS, "clause": CLAUSES,
    "frame": FRAMES,
}
ALL_PROMPTS = [p for category in CATEGORIES for p in all_prompts(category)]


def fragments(phrasing: str) -> list[str]:
    """The words a phrasing adds: a template's literal parts ("{shape} in {color}" -> "in"),
    shape words with their plurals."""
    out = [part.strip() for part in re.split(r"\{\w+\}", phrasing) if part.strip()]
    return out + [plural(p) for p in out if p in VOCABULARY["shape"]]


VOCABULARY = {  # every phrase that names a colour / a shape, in any split
    "color": {w for p in COLOR_WORDS.values() for w in p.train + p.heldout},
    "shape": {w for p in SHAPE_WORDS.values() for w in p.train + p.heldout},
}
VOCABULARY["shape"] |= {plural(w) for w in VOCABULARY["shape"]}


def phrases_of(split: str) -> list[str]:
    """Every fragment of every phrasing of `split`, longest first."""
    found = {f for p in SLOTS.values() for phrasing in (p.train if split == "train"
                                                         else p.heldout)
             for f in fragments(phrasing)}
    return sorted(found, key=lambda f: (-len(f), f))


def _pattern(phrases) -> re.Pattern:
    return re.compile("|".join(rf"\b{re.escape(p)}\b" for p in phrases))


HELDOUT, TRAIN = _pattern(phrases_of("heldout")), _pattern(phrases_of("train"))


def heldout_in(text: str) -> list[str]:
    """Held-out phrasings found in a text (a training caption must have none)."""
    return HELDOUT.findall(text.lower())


def training_in(text: str) -> list[str]:
    """Training phrasings found in a text once its held-out phrasings are taken out (a
    held-out phrasing is one unit: "five-pointed star" is not the training word "star")."""
    return TRAIN.findall(HELDOUT.sub(" # ", text.lower()))


def style_ok(text: str, split: str) -> bool:
    """Training: lower, "lower." or "Sentence."; held-out: lower or "Sentence" (no period)."""
    if split == "heldout":
        return not text.endswith(".")
    return text[0].islower() or text.endswith(".")


# ---------------------------------------------------------------------------------------------
# The tables
# ---------------------------------------------------------------------------------------------
def test_tables_cover_the_world_and_splits_are_disjoint():
    assert set(COLOR_WORDS) == set(COLORS) and set(SHAPE_WORDS) == set(SHAPES)
    assert set(COUNT_PHRASES) == set(COUNT_WORDS) and set(RELATION_PHRASES) == set(RELATIONS)
    for name, p in [*SLOTS.items(), ("style", STYLES)]:
        assert p.train and p.heldout, name
        assert not set(p.train) & set(p.heldout), name
        assert not set(p.open) & set(p.train + p.heldout), name
        assert p.canonical in p.open + p.train, name  # training sees canonical captions
        if name != "style":  # open phrasings add no words
            assert all(fragments(o) == [] for o in p.open), name
    # the canonical words are the first training phrasings
    for name, p in COLOR_WORDS.items():
        assert p.canonical == name
    for relation, p in RELATION_PHRASES.items():
        assert p.canonical == relation
    assert [p.canonical for p in COUNT_PHRASES.values()] == list(COUNT_WORDS.values())


def test_no_heldout_phrasing_hides_inside_a_training_one():
    for p in SLOTS.values():
        for phrasing in p.train:
            for fragment in fragments(phrasing):
                assert not heldout_in(fragment), (fragment, heldout_in(fragment))


def test_colour_and_shape_words_name_one_thing_each():
    """No word of one colour (shape) contains a word of another, or of a shape (colour)."""
    owners: dict[str, set[str]] = {}
    for table in (COLOR_WORDS, SHAPE_WORDS):
        for name, p in table.items():
            for w in p.train + p.heldout:
                owners.setdefault(w, set()).add(name)
    for word in owners:
        inside = {w for w in owners if re.search(rf"\b{re.escape(w)}\b", word)}
        assert set().union(*(owners[w] for w in inside)) == owners[word], word


# ---------------------------------------------------------------------------------------------
# Same scene
# ---------------------------------------------------------------------------------------------
def _relations_in(text: str) -> set[str]:
    phrases = sorted(((ph, r) for r, p in RELATION_PHRASES.items() for ph in p.train + p.heldout),
                     key=lambda x: -len(x[0]))
    found, rest = set(), text
    for phrase, relation in phrases:  # longest first: "to the left of" before "left of"
        if re.search(rf"\b{re.escape(phrase)}\b", rest):
            found.add(relation)
            rest = re.sub(rf"\b{re.escape(phrase)}\b", " # ", rest)
    return found


def _counts_in(text: str) -> set[int]:
    return {n for n, p in COUNT_PHRASES.items() for ph in p.train + p.heldout
            if re.search(rf"\b{re.escape(ph)}\b", text)}


def assert_same_scene(caption: Caption, prompt: str, split: str) -> None:
    """The caption names exactly the objects of the canonical `prompt`, each by a word of
    `split` for its colour and shape, with the same relation or count, and nothing else."""
    parsed = parse_prompt(prompt)
    text, spans = caption.text, caption.spans
    assert caption.canonical == prompt
    assert list(spans) == sorted(spans) and all(
        a.end <= b.start for a, b in zip(spans, spans[1:], strict=False)), spans
    for entity, obj in enumerate(parsed.objects):
        words = {s.kind: text[s.start:s.end].lower() for s in spans if s.entity == entity}
        assert len([s for s in spans if s.entity == entity]) == len(words), spans
        shapes = SHAPE_WORDS[obj.shape].options(split)
        if parsed.category == "counting":
            shapes = tuple(plural(w) for w in shapes)
        assert words.pop("shape") in shapes, (text, entity)
        if obj.color is not None:
            assert words.pop("color") in COLOR_WORDS[obj.color].options(split), (text, entity)
        assert not words, (text, words)
    assert {s.entity for s in spans} == set(range(len(parsed.objects)))
    # outside its spans the caption names no colour or shape, and no other count or relation
    rest = text.lower()
    for s in spans:
        rest = rest[:s.start] + "#" * (s.end - s.start) + rest[s.end:]
    vocabulary = VOCABULARY["color"] | VOCABULARY["shape"]
    assert not _pattern(vocabulary).findall(rest), (text, rest)
    expected_counts = {parsed.count} if parsed.category == "counting" else set()
    assert _counts_in(rest) == expected_counts, text
    if parsed.category != "position":
        assert _relations_in(rest) == set(), text
        return
    # the first object named is the subject: the relation as written, or flipped if reordered
    subject = spans[0].entity
    between = rest[max(s.end for s in spans if s.entity == subject):
                   min(s.start for s in spans if s.entity != subject)]
    written = parsed.relation if subject == 0 else flip_relation(parsed.relation)
    assert _relations_in(between) == _relations_in(rest) == {written}, text


@pytest.mark.parametrize("split", SPLITS)
@pytest.mark.parametrize("category", CATEGORIES)
def test_every_canonical_prompt_keeps_its_scene(category, split):
    rng = np.random.default_rng([CATEGORIES.index(category), SPLITS.index(split)])
    repeats = 1 if category in ("color_attr", "position") else 12  # >= 600 captions each
    for prompt in all_prompts(category) * repeats:
        caption = paraphrase(parse_prompt(prompt), rng, split)
        assert_same_scene(caption, prompt, split)
        assert style_ok(caption.text, split), caption.text


def test_canonical_caption_is_the_grammar_with_its_words_as_spans():
    for prompt in ALL_PROMPTS:
        caption = canonical_caption(parse_prompt(prompt))
        assert caption.text == caption.canonical == prompt
        assert_same_scene(caption, prompt, "train")


# ---------------------------------------------------------------------------------------------
# Disjoint splits on generated samples
# ---------------------------------------------------------------------------------------------
def _sample(split: str, n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    prompts = rng.choice(ALL_PROMPTS, size=n)
    by_category = {c: all_prompts(c) for c in CATEGORIES}  # and every category as often
    prompts = list(prompts) + [by_category[c][int(rng.integers(len(by_category[c])))]
                               for c in CATEGORIES for _ in range(n // 6)]
    return [paraphrase(parse_prompt(p), rng, split).text for p in prompts]


@pytest.fixture(scope="module")
def samples() -> dict[str, list[str]]:
    return {split: _sample(split, 6000, seed) for seed, split in enumerate(SPLITS)}


def test_training_captions_never_hold_a_heldout_phrasing(samples):
    for text in samples["train"]:
        assert not heldout_in(text), (text, heldout_in(text))
        assert style_ok(text, "train"), text


def test_heldout_captions_hold_no_training_phrasing(samples):
    for text in samples["heldout"]:
        assert not training_in(text), (text, training_in(text))
        assert style_ok(text, "heldout"), text
        assert text.lower() not in ALL_PROMPTS  # never a canonical caption


def test_every_phrasing_is_used(samples):
    """Each split's sample uses every phrasing of that split (none is dead text)."""
    for split in SPLITS:
        text = "\n".join(t.lower() for t in samples[split])
        for name, p in SLOTS.items():
            for phrasing in (p.train if split == "train" else p.heldout):
                for fragment in fragments(phrasing)[:1]:
                    assert re.search(rf"\b{re.escape(fragment)}\b", text), (split, name, phrasing)
        ends = Counter(("upper" if t[0].isupper() else "lower", t.endswith("."))
                       for t in samples[split])
        assert set(ends) == ({("lower", False), ("lower", True), ("upper", True)}
                             if split == "train" else {("lower", False), ("upper", False)})


# ---------------------------------------------------------------------------------------------
# Determinism, version pinning, training prompts
# ---------------------------------------------------------------------------------------------
# Fixed seeds -> fixed captions. If one changes, the caption language changed: bump
# CAPTION_LANGUAGE_VERSION (data sets and paraphrase suites record it) and update the pins.
PINNED = [
    ("a circle", 0, "train", "there is a disc."),
    ("an orange star", 1, "train", "a tangerine-coloured star on a dark background"),
    ("a red circle and a white star", 2, "train",
     "There is a star in white as well as a red disc."),
    ("three stars", 3, "train", "an image of a trio of stars"),
    ("a red circle to the left of a blue square", 4, "train",
     "a crimson-coloured disc is left of a cobalt block"),
    ("a square", 5, "heldout", "an illustration of a box"),
    ("a purple triangle and a green circle", 6, "heldout",
     "a picture of a pyramid shape that is violet along with a circular shape that is emerald"),
    ("four squares", 7, "heldout", "A photo of exactly 4 boxes"),
    ("a cyan star above a yellow circle", 8, "heldout",
     "A round dot painted lemon sits beneath an aqua five-pointed star"),
]


def test_paraphrases_are_pinned():
    assert CAPTION_LANGUAGE_VERSION == 1 and PARAPHRASE_LABEL == "paraphrase-v1"
    got = [(p, seed, split, paraphrase(parse_prompt(p), np.random.default_rng(seed), split).text)
           for p, seed, split, _ in PINNED]
    assert got == PINNED


def test_same_stream_same_caption():
    parsed = parse_prompt("a white star below a green triangle")
    for split in SPLITS:
        a = [paraphrase(parsed, np.random.default_rng(9), split) for _ in range(2)]
        assert a[0] == a[1]
        rng = np.random.default_rng(9)
        assert len({paraphrase(parsed, rng, split).text for _ in range(50)}) > 20


def test_training_caption_mixes_and_can_be_rebuilt():
    parsed = parse_prompt("a blue square above a red star")
    canonical = canonical_caption(parsed)
    labels = Counter()
    for seed in range(2000):
        caption = training_caption(parsed, np.random.default_rng(seed), 0.3)
        label = caption_label(caption)
        labels[label] += 1
        # the record's label and the example's caption stream give the caption back
        assert rebuild_caption(parsed, label, np.random.default_rng(seed)) == caption
        if label == PARAPHRASE_LABEL:
            assert caption == paraphrase(parsed, np.random.default_rng(seed), "train")
    assert 0.26 < labels[CANONICAL_LABEL] / 2000 < 0.34  # 0.3 + chance paraphrase == canonical
    assert training_caption(parsed, np.random.default_rng(1), 1.0) == canonical
    assert training_caption(parsed, np.random.default_rng(1), 0.0) == paraphrase(
        parsed, np.random.default_rng(1), "train")
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(ValueError, match="canonical_share"):
            training_caption(parsed, np.random.default_rng(0), bad)
    with pytest.raises(ValueError, match="re-synthesise"):
        rebuild_caption(parsed, "paraphrase-v0", np.random.default_rng(0))
    with pytest.raises(ValueError, match="split"):
        paraphrase(parsed, np.random.default_rng(0), "test")


@pytest.mark.parametrize("category", CATEGORIES)
def test_sample_training_prompts(category):
    pairs = sample_training_prompts(category, np.random.default_rng(3), 400)
    assert pairs == sample_training_prompts(category, np.random.default_rng(3), 400)
    canonical_share = sum(text == canonical for text, canonical in pairs) / len(pairs)
    assert 0.2 < canonical_share < 0.5
    for text, canonical in pairs:
        assert parse_prompt(canonical).category == category
        assert format_prompt(parse_prompt(canonical)) == canonical
        assert not heldout_in(text), text
    only_canonical = sample_training_prompts(category, np.random.default_rng(3), 20, 1.0)
    assert all(text == canonical for text, canonical in only_canonical)


def test_docs_list_every_phrasing():
    doc = (Path(__file__).resolve().parents[3] / "docs" / "captions.md").read_text()
    for name, p in [*SLOTS.items(), ("style", STYLES)]:
        for phrasing in p.train + p.heldout + p.open:
            assert f"`{phrasing}`" in doc, (name, phrasing)
