"""The caption language of the shapes world: paraphrases beside the canonical grammar.

The spec (/work/shared/specs/shapes-world.md) fixes one canonical grammar (`pictor.data.shapes`)
and allows paraphrases beside it. A paraphrase says the same scene in other words: "a cobalt
block is right of a crimson disc" is the canonical "a red circle to the left of a blue square",
so the scene, and the scorer's verdict, are the canonical caption's. DALL-E 3 (Betker
et al. 2023) found that varied, rewritten training captions are what make a model follow
prompts; a network that only ever saw one grammar fails on everyday wording.

Slots. A caption is built from slots, and every slot has *training* phrasings and *held-out*
phrasings, disjoint: training never sees a held-out phrasing, so a suite written in held-out
phrasings (`geneval-shapes-para`) measures whether the model generalises to wording it never
saw. The tables below are the whole language:

- colour synonyms (`COLOR_WORDS`) and shape synonyms (`SHAPE_WORDS`; plurals add -s/-es);
- count phrases (`COUNT_PHRASES`): number words, "a pair of", digits, ...;
- relation phrases (`RELATION_PHRASES`); half of the `position` captions name the second object
  first with the flipped relation ("B is to the right of A" for "A to the left of B");
- conjunctions of two objects (`CONJUNCTIONS`); the two objects swap order half of the time,
  harmless since two_object and color_attr ask for a set;
- attribute forms (`ATTRIBUTE_FORMS`): "a circle in red", "a circle painted red", ...;
- clause forms of `position` (`CLAUSES`): "A is left of B" (a sentence: it takes no frame);
- sentence frames (`FRAMES`): "a picture of ...", "there is ...", "... on a dark background";
- style (`STYLES`): capitalisation and the final period.

The canonical caption's own phrasings are training phrasings (training sees canonical captions).
Choices that add no words (no frame, the bare "A rel B" and "a red circle" word orders, lower
case without a period) are `open` to both splits: they are the grammar itself, not a phrasing
to hold out, and without them every held-out caption would need a frame and a verb.

Spans. A `Caption` carries the character spans of the words that name each object (`Span`:
start, end, entity, kind "color" or "shape"), entity numbered in the *canonical* order as
`pictor.training.grounding` numbers masks (counting: the plural noun, entity 0). The grounding
loss takes its token pairs from these spans, for canonical and paraphrased captions alike.

Versions. What `paraphrase` returns for a given (prompt, rng state, split) is part of
`CAPTION_LANGUAGE_VERSION`: any change to the tables, their order, the templates or the order
of the random draws must bump it (tests pin a few outputs). Data sets record it
("paraphrase-v1"), so a record's caption can be rebuilt from its seed (`rebuild_caption`).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from pictor.data.shapes import (
    CATEGORIES,
    ParsedPrompt,
    PromptObject,
    _article,  # the grammar's own a/an rule (next word's first letter), shared on purpose
    caption_for,
    flip_relation,
    format_prompt,
    parse_prompt,
    sample_scene,
)

CAPTION_LANGUAGE_VERSION = 1  # bump on any change to what `paraphrase` generates
SPLITS = ("train", "heldout")
CAPTION_MODES = ("canonical", "paraphrase", "mix")  # `pictor data synth --captions`
DEFAULT_CANONICAL_SHARE = 0.3  # mix: share of canonical captions among training captions
CANONICAL_LABEL = "canonical"  # a record's `captions` field: how its text was made
PARAPHRASE_LABEL = f"paraphrase-v{CAPTION_LANGUAGE_VERSION}"
SWAP_PROBABILITY = 0.5  # two objects named in the other order (relation flipped for position)


@dataclass(frozen=True)
class Phrasings:
    """The phrasings of one slot: `train` and `heldout` are disjoint; `open` add no words
    (see the module docstring) and serve both splits. The canonical phrasing comes first:
    `open[0]` if the slot has open phrasings, else `train[0]`."""

    train: tuple[str, ...]
    heldout: tuple[str, ...]
    open: tuple[str, ...] = ()

    def options(self, split: str) -> tuple[str, ...]:
        return self.open + (self.train if split == "train" else self.heldout)

    @property
    def canonical(self) -> str:
        return (self.open or self.train)[0]


# ---------------------------------------------------------------------------------------------
# The language (changing anything below means a new CAPTION_LANGUAGE_VERSION)
# ---------------------------------------------------------------------------------------------
# Colour words a person would use for the spec's RGB, e.g. crimson (220, 20, 60) for red
# (220, 40, 40), turquoise (64, 224, 208) and aqua (0, 255, 255) for cyan (30, 200, 220),
# ivory (255, 255, 240) for white (235, 235, 235). None contains another palette name.
COLOR_WORDS: dict[str, Phrasings] = {
    "red": Phrasings(("red", "crimson"), ("scarlet",)),
    "orange": Phrasings(("orange", "tangerine"), ("pumpkin",)),
    "yellow": Phrasings(("yellow", "golden"), ("lemon",)),
    "green": Phrasings(("green", "jade"), ("emerald",)),
    "cyan": Phrasings(("cyan", "turquoise"), ("aqua",)),
    "blue": Phrasings(("blue", "cobalt"), ("sapphire",)),
    "purple": Phrasings(("purple", "amethyst"), ("violet",)),
    "white": Phrasings(("white", "pure white"), ("ivory",)),
}
# Flat shapes only: no "ring" (not a disc), "ball" or "cube" (solids), "rectangle" (not square).
SHAPE_WORDS: dict[str, Phrasings] = {
    "circle": Phrasings(("circle", "disc"), ("round dot", "circular shape")),
    "square": Phrasings(("square", "block"), ("tile", "box")),
    "triangle": Phrasings(("triangle", "three-sided shape"),
                          ("triangular shape", "pyramid shape")),
    "star": Phrasings(("star", "star shape"), ("five-pointed star",)),
}
COUNT_PHRASES: dict[int, Phrasings] = {
    2: Phrasings(("two", "a pair of"), ("2", "exactly 2")),
    3: Phrasings(("three", "a trio of"), ("3", "exactly 3")),
    4: Phrasings(("four", "a group of four"), ("4", "exactly 4")),
}
# Each phrase means the relation as the scorer judges it (centres along one axis); nothing
# that says "touching" ("on top of") or only "near" ("beside", "next to").
RELATION_PHRASES: dict[str, Phrasings] = {
    "to the left of": Phrasings(
        ("to the left of", "left of", "on the left of", "further left than"),
        ("on the left side of", "to the left side of", "more to the left than")),
    "to the right of": Phrasings(
        ("to the right of", "right of", "on the right of", "further right than"),
        ("on the right side of", "to the right side of", "more to the right than")),
    "above": Phrasings(("above", "over", "higher than"), ("higher up than", "further up than")),
    "below": Phrasings(("below", "under", "lower than"),
                       ("beneath", "lower down than", "further down than")),
}
CONJUNCTIONS = Phrasings(("and", "as well as", "plus"), ("together with", "along with"))
ATTRIBUTE_FORMS = Phrasings(
    train=("{shape} in {color}", "{color}-coloured {shape}"),
    heldout=("{shape} that is {color}", "{shape} painted {color}"),
    open=("{color} {shape}",))
CLAUSES = Phrasings(  # position only; a form with a verb is a sentence and takes no frame
    train=("{subject} is {relation} {object}",),
    heldout=("{subject} sits {relation} {object}",),
    open=("{subject} {relation} {object}",))
FRAMES = Phrasings(  # {be}: "is", or "are" before a plural count ("there are three stars")
    train=("an image of {body}", "an image showing {body}", "there {be} {body}",
           "a drawing of {body}", "{body} on a dark background"),
    heldout=("a picture of {body}", "a photo of {body}", "an illustration of {body}"),
    open=("{body}",))
# lower: as written; Sentence: first letter capitalised; ".": a final period.
STYLES = Phrasings(train=("lower.", "Sentence."), heldout=("Sentence",), open=("lower",))


# ---------------------------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------------------------
class Span(NamedTuple):
    """Characters text[start:end] name object `entity` (canonical order) by its `kind`."""

    start: int
    end: int
    entity: int
    kind: str  # "color" or "shape"


@dataclass(frozen=True)
class Caption:
    """A caption of a scene: its text, the canonical caption of the same scene, and the spans
    of the words that name each object (in text order)."""

    text: str
    canonical: str
    spans: tuple[Span, ...]


class _Word(NamedTuple):
    text: str  # a piece starting with "-" is glued to the previous one ("red" + "-coloured")
    entity: int | None = None
    kind: str | None = None


class _Choices:
    """The choices of one caption: drawn from a split's options, or (rng None) canonical."""

    def __init__(self, rng: np.random.Generator | None, split: str) -> None:
        self.rng, self.split = rng, split

    def pick(self, phrasings: Phrasings) -> str:
        if self.rng is None:
            return phrasings.canonical
        options = phrasings.options(self.split)
        return options[int(self.rng.integers(len(options)))]

    def swap(self) -> bool:
        return self.rng is not None and bool(self.rng.random() < SWAP_PROBABILITY)


def plural(noun: str) -> str:
    """The plural of a shape word ("box" -> "boxes", "round dot" -> "round dots")."""
    return noun + ("es" if noun.endswith(("s", "x", "sh", "ch")) else "s")


def _fill(template: str, slots: dict[str, list[_Word]]) -> list[_Word]:
    """The template's literal words and its `{name}` slots' words, in order."""
    words: list[_Word] = []
    for part in re.split(r"(\{\w+\})", template):
        if part.startswith("{"):
            words += slots[part[1:-1]]
        else:
            words += [_Word(w) for w in part.split()]
    return words


def _noun_phrase(obj: PromptObject, entity: int, choose: _Choices) -> list[_Word]:
    """`a|an` + the object in a shape word and, where it has one, a colour word and form."""
    shape = [_Word(choose.pick(SHAPE_WORDS[obj.shape]), entity, "shape")]
    if obj.color is None:
        words = shape
    else:
        color = [_Word(choose.pick(COLOR_WORDS[obj.color]), entity, "color")]
        words = _fill(choose.pick(ATTRIBUTE_FORMS), {"shape": shape, "color": color})
    return [_Word(_article(words[0].text)), *words]


def _body(parsed: ParsedPrompt, choose: _Choices) -> tuple[list[_Word], bool, bool]:
    """The words naming the scene, whether they form a clause (no frame) and are plural."""
    category, objects = parsed.category, parsed.objects
    if category == "counting":
        count = choose.pick(COUNT_PHRASES[parsed.count])
        noun = plural(choose.pick(SHAPE_WORDS[objects[0].shape]))
        words = [_Word(w) for w in count.split()] + [_Word(noun, 0, "shape")]
        return words, False, not count.startswith("a ")
    if category in ("single_object", "colors"):
        return _noun_phrase(objects[0], 0, choose), False, False
    order = (1, 0) if choose.swap() else (0, 1)
    first, second = (_noun_phrase(objects[e], e, choose) for e in order)
    if category == "position":
        relation = parsed.relation if order == (0, 1) else flip_relation(parsed.relation)
        phrase = [_Word(w) for w in choose.pick(RELATION_PHRASES[relation]).split()]
        clause = choose.pick(CLAUSES)
        words = _fill(clause, {"subject": first, "relation": phrase, "object": second})
        return words, clause != CLAUSES.open[0], False
    conjunction = [_Word(w) for w in choose.pick(CONJUNCTIONS).split()]
    return first + conjunction + second, False, False


def _styled(text: str, style: str) -> str:
    """Capitalisation and final period; never changes a character's position."""
    if style.startswith("Sentence"):
        text = text[:1].upper() + text[1:]
    return text + ("." if style.endswith(".") else "")


def _compose(parsed: ParsedPrompt, choose: _Choices) -> Caption:
    if parsed.category not in CATEGORIES:
        raise ValueError(f"unknown category {parsed.category!r}; choose one of "
                         f"{', '.join(CATEGORIES)}")
    body, is_clause, is_plural = _body(parsed, choose)
    words = body
    if not is_clause:
        be = [_Word("are" if is_plural else "is")]
        words = _fill(choose.pick(FRAMES), {"body": body, "be": be})
    style = choose.pick(STYLES)
    text, spans = "", []
    for word in words:
        if text and not word.text.startswith("-"):
            text += " "
        if word.entity is not None:
            spans.append(Span(len(text), len(text) + len(word.text), word.entity, word.kind))
        text += word.text
    return Caption(_styled(text, style), format_prompt(parsed), tuple(spans))


def canonical_caption(parsed: ParsedPrompt) -> Caption:
    """The canonical caption (text == `format_prompt(parsed)`) with its spans."""
    return _compose(parsed, _Choices(None, "train"))


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")


def paraphrase(parsed: ParsedPrompt, rng: np.random.Generator, split: str) -> Caption:
    """A random caption of the same scene in the phrasings of `split` ("train": what training
    data may say; "heldout": what only the paraphrase suites say). Deterministic in the rng's
    state, for one CAPTION_LANGUAGE_VERSION."""
    _check_split(split)
    return _compose(parsed, _Choices(rng, split))


def check_canonical_share(canonical_share: float) -> None:
    """ValueError unless `canonical_share` is a fraction in [0, 1]."""
    if not (math.isfinite(canonical_share) and 0.0 <= canonical_share <= 1.0):
        raise ValueError(f"canonical_share is a fraction in [0, 1] (e.g. "
                         f"{DEFAULT_CANONICAL_SHARE}), got {canonical_share}")


def training_caption(parsed: ParsedPrompt, rng: np.random.Generator,
                     canonical_share: float = DEFAULT_CANONICAL_SHARE) -> Caption:
    """The canonical caption with probability `canonical_share`, else a training paraphrase.

    The paraphrase is drawn first, whatever the outcome, so `paraphrase(parsed, rng, "train")`
    on a fresh copy of the stream rebuilds any paraphrased result (`rebuild_caption`)."""
    check_canonical_share(canonical_share)
    drawn = paraphrase(parsed, rng, "train")
    return canonical_caption(parsed) if rng.random() < canonical_share else drawn


def caption_label(caption: Caption) -> str:
    """What a record's `captions` field says about this caption: "canonical" when its text is
    the canonical one (however it was drawn), else the paraphrase language and version."""
    return CANONICAL_LABEL if caption.text == caption.canonical else PARAPHRASE_LABEL


def rebuild_caption(parsed: ParsedPrompt, label: str, rng: np.random.Generator) -> Caption:
    """The caption a record labelled `label` holds, from the caption stream it was drawn from
    (a training paraphrase: see `training_caption`). ValueError for another language version."""
    if label == CANONICAL_LABEL:
        return canonical_caption(parsed)
    if label != PARAPHRASE_LABEL:
        raise ValueError(f"captions {label!r} are not of this caption language "
                         f"({PARAPHRASE_LABEL}); re-synthesise the data set with this version")
    return paraphrase(parsed, rng, "train")


def sample_training_prompts(category: str, rng: np.random.Generator, num_prompts: int,
                            canonical_share: float = DEFAULT_CANONICAL_SHARE
                            ) -> list[tuple[str, str]]:
    """`num_prompts` (text, canonical) pairs of `category` in training phrasings: canonical
    prompts drawn as the training data draws them (`sample_scene`), each captioned by
    `training_caption`. For loops that sample prompts on their own (reward fine-tuning); give
    them a stream of the `train` namespace, never a suite's."""
    if num_prompts < 0:
        raise ValueError(f"num_prompts must be >= 0, got {num_prompts}")
    out = []
    for _ in range(num_prompts):
        scene, relation = sample_scene(category, rng)
        parsed = parse_prompt(caption_for(scene, category, relation))
        caption = training_caption(parsed, rng, canonical_share)
        out.append((caption.text, caption.canonical))
    return out

