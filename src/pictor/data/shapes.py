"""The shapes world: renderer, caption grammar and prompt parser.

Binding spec: /work/shared/specs/shapes-world.md (version 1). Summary of what this file encodes:

- canvas 64 x 64 RGB, background (32, 32, 32); shapes drawn flat in one palette colour;
- shapes: circle, square, triangle (upright isosceles, height = width), star (upright, five
  points, inner radius 0.45 x outer radius); bounding-box width a whole number in [16, 24] px;
- every shape inside the canvas with a 2 px margin; bounding boxes at least 3 px apart;
- anti-aliasing: coverage is sampled on a 4x grid and box-filtered down (render at 4x and
  downsample with an area filter);
- six prompt categories with a canonical lower-case grammar (`a`/`an` by the next word's vowel).

Geometry conventions. A shape is placed by the integer top-left corner of its bounding box
(`left`, `top`, in pixels) and its bounding-box width `size_px`. Every shape's box is square
except the star's, whose height is `size_px * (1 + cos 36deg) / (2 sin 72deg)` ~= 0.951 width.
The *centre* of a shape is the centre of its bounding box; the `position` relation is judged on
these centres (renders keep them >= 12 px apart along the relation's axis, the scorer needs 4).

Rendering is fast because placements are integer: the anti-aliased coverage mask of each
(shape, size) pair is computed once and cached, so a scene is a few array additions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache

import numpy as np
from PIL import Image

# ---------------------------------------------------------------------------------------------
# Constants of the world (spec tables)
# ---------------------------------------------------------------------------------------------
CANVAS_SIZE_PX = 64
BACKGROUND_RGB = (32, 32, 32)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 180, 70),
    "cyan": (30, 200, 220),
    "blue": (40, 90, 230),
    "purple": (150, 60, 210),
    "white": (235, 235, 235),
}
SHAPES = ("circle", "square", "triangle", "star")
CATEGORIES = ("single_object", "colors", "two_object", "color_attr", "counting", "position")
RELATIONS = ("to the left of", "to the right of", "above", "below")
COUNT_WORDS = {2: "two", 3: "three", 4: "four"}

MIN_SIZE_PX = 16  # smallest bounding-box width
MAX_SIZE_PX = 24  # largest bounding-box width
MARGIN_PX = 2  # free border of the canvas
MIN_GAP_PX = 3  # smallest distance between two bounding boxes
MAX_SHAPES = 4  # shapes per image: 1..4
SUPERSAMPLE = 4  # anti-aliasing: coverage sampled on a 4x grid, then box-filtered
STAR_INNER_RATIO = 0.45  # inner radius / outer radius
RENDER_MIN_OFFSET_PX = 12  # `position` renders: centres this far apart along the axis
JUDGE_MIN_OFFSET_PX = 4  # `position` judging: a relation holds from this offset on

# Star: outer radius R from the bounding-box width w = 2 R sin 72deg; height = R (1 + cos 36deg).
_STAR_HEIGHT_PER_WIDTH = (1 + math.cos(math.radians(36))) / (2 * math.sin(math.radians(72)))

# Relation -> (axis, sign): A rel B holds when sign * (centre_B - centre_A)[axis] >= offset.
_RELATION_AXIS = {
    "to the left of": (0, 1),
    "to the right of": (0, -1),
    "above": (1, 1),
    "below": (1, -1),
}
_FLIPPED_RELATION = {
    "to the left of": "to the right of",
    "to the right of": "to the left of",
    "above": "below",
    "below": "above",
}
_MAX_PLACEMENT_ATTEMPTS = 200  # per scene before the layout is drawn again


# ---------------------------------------------------------------------------------------------
# Scenes
# ---------------------------------------------------------------------------------------------
def shape_height_px(shape: str, size_px: int) -> float:
    """Bounding-box height of a shape of bounding-box width `size_px` (all square but the star)."""
    return size_px * _STAR_HEIGHT_PER_WIDTH if shape == "star" else float(size_px)


@dataclass(frozen=True)
class ShapeSpec:
    """One flat shape: kind, palette colour, integer top-left of its bounding box, its width."""

    shape: str  # one of SHAPES
    color: str  # a key of COLORS
    left: int  # bounding-box left edge, pixels from the canvas' left edge
    top: int  # bounding-box top edge, pixels from the canvas' top edge
    size_px: int  # bounding-box width, MIN_SIZE_PX..MAX_SIZE_PX

    @property
    def height_px(self) -> float:
        return shape_height_px(self.shape, self.size_px)

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """(left, top, right, bottom) in continuous pixel coordinates."""
        return (self.left, self.top, self.left + self.size_px, self.top + self.height_px)

    @property
    def center(self) -> tuple[float, float]:
        """(x, y) centre of the bounding box; the point `position` relations are judged on."""
        return (self.left + self.size_px / 2, self.top + self.height_px / 2)


@dataclass(frozen=True)
class Scene:
    """What one image holds, in drawing order (order matters only for captions)."""

    shapes: tuple[ShapeSpec, ...]


def _bbox_gap_px(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """Distance between two axis-aligned boxes along the axis that separates them most."""
    return max(b[0] - a[2], a[0] - b[2], b[1] - a[3], a[1] - b[3])


def validate_scene(scene: Scene) -> None:
    """Raise ValueError unless the scene follows the spec's placement rules."""
    if not 1 <= len(scene.shapes) <= MAX_SHAPES:
        raise ValueError(f"a scene holds 1 to {MAX_SHAPES} shapes, got {len(scene.shapes)}")
    limit = CANVAS_SIZE_PX - MARGIN_PX
    for spec in scene.shapes:
        if spec.shape not in SHAPES:
            raise ValueError(f"unknown shape {spec.shape!r}; choose one of {', '.join(SHAPES)}")
        if spec.color not in COLORS:
            raise ValueError(f"unknown colour {spec.color!r}; choose one of {', '.join(COLORS)}")
        if not MIN_SIZE_PX <= spec.size_px <= MAX_SIZE_PX:
            raise ValueError(
                f"size_px must be in [{MIN_SIZE_PX}, {MAX_SIZE_PX}], got {spec.size_px}"
            )
        left, top, right, bottom = spec.bbox
        if left < MARGIN_PX or top < MARGIN_PX or right > limit or bottom > limit:
            raise ValueError(
                f"{spec} leaves the canvas' {MARGIN_PX} px margin (allowed box: "
                f"[{MARGIN_PX}, {limit}] on both axes)"
            )
    for i, a in enumerate(scene.shapes):
        for b in scene.shapes[i + 1 :]:
            if _bbox_gap_px(a.bbox, b.bbox) < MIN_GAP_PX:
                raise ValueError(f"bounding boxes of {a} and {b} are closer than {MIN_GAP_PX} px")


# ---------------------------------------------------------------------------------------------
# Rendering
# ---------------------------------------------------------------------------------------------
def _star_vertices(size_px: int) -> np.ndarray:
    """(10, 2) star polygon (x, y), apex at the top centre, in the box's own coordinates."""
    outer = size_px / (2 * math.sin(math.radians(72)))
    angles = np.radians(np.arange(10) * 36.0)  # clockwise from straight up
    radii = np.where(np.arange(10) % 2 == 0, outer, STAR_INNER_RATIO * outer)
    return np.stack([size_px / 2 + radii * np.sin(angles), outer - radii * np.cos(angles)], 1)


def _inside_polygon(x: np.ndarray, y: np.ndarray, vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over the points (x, y)."""
    inside = np.zeros(np.broadcast(x, y).shape, dtype=bool)
    x0, y0 = vertices[-1]
    for x1, y1 in vertices:
        crosses = (y0 > y) != (y1 > y)
        with np.errstate(divide="ignore", invalid="ignore"):
            x_at_y = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at_y)
        x0, y0 = x1, y1
    return inside


@cache
def shape_coverage(shape: str, size_px: int) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of a shape in its own box: (ceil(height), size_px) float32.

    Coverage is sampled at the centres of a SUPERSAMPLE x SUPERSAMPLE grid per pixel (the 4x
    render) and averaged per pixel (box / area downsampling). Read-only: the array is shared.
    """
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}; choose one of {', '.join(SHAPES)}")
    s = SUPERSAMPLE
    height = math.ceil(shape_height_px(shape, size_px) - 1e-9)
    x = ((np.arange(size_px * s) + 0.5) / s)[None, :]  # (1, W*s) in pixels
    y = ((np.arange(height * s) + 0.5) / s)[:, None]  # (H*s, 1)
    half = size_px / 2
    if shape == "circle":
        inside = (x - half) ** 2 + (y - half) ** 2 <= half**2
    elif shape == "square":
        inside = np.ones((height * s, size_px * s), dtype=bool)
    elif shape == "triangle":  # apex (w/2, 0), base from (0, w) to (w, w): |x - w/2| <= y / 2
        inside = np.abs(x - half) <= y / 2
    else:
        inside = _inside_polygon(x, y, _star_vertices(size_px))
    coverage = inside.reshape(height, s, size_px, s).mean(axis=(1, 3), dtype=np.float32)
    coverage.setflags(write=False)
    return coverage


def render_scene_array(scene: Scene, validate: bool = True) -> np.ndarray:
    """Render a scene to a (64, 64, 3) uint8 array."""
    if validate:
        validate_scene(scene)
    background = np.asarray(BACKGROUND_RGB, dtype=np.float32)
    canvas = np.empty((CANVAS_SIZE_PX, CANVAS_SIZE_PX, 3), dtype=np.float32)  # (H, W, 3)
    canvas[:] = background
    for spec in scene.shapes:
        alpha = shape_coverage(spec.shape, spec.size_px)  # (h, w)
        h, w = alpha.shape
        delta = np.asarray(COLORS[spec.color], dtype=np.float32) - background
        # Boxes never overlap, so adding each shape's contribution is exact compositing.
        canvas[spec.top : spec.top + h, spec.left : spec.left + w] += alpha[..., None] * delta
    return np.rint(canvas).astype(np.uint8)


def render_scene(scene: Scene, validate: bool = True) -> Image.Image:
    """Render a scene to a 64 x 64 RGB PIL image."""
    return Image.fromarray(render_scene_array(scene, validate), mode="RGB")


# ---------------------------------------------------------------------------------------------
# Prompt structure, formatting (the caption grammar) and parsing
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PromptObject:
    """One object a prompt names: a shape and, where the grammar names one, a colour."""

    shape: str
    color: str | None = None


@dataclass(frozen=True)
class ParsedPrompt:
    """A prompt of the canonical grammar as structure.

    `objects` are the object phrases as written (one for `counting`); `count` is how many shapes
    the image must hold in total; `relation` is set only for `position` (objects[0] rel objects[1]).
    """

    category: str
    objects: tuple[PromptObject, ...]
    count: int
    relation: str | None = None

    def expected_objects(self) -> list[PromptObject]:
        """The multiset of objects the image must hold, one entry per shape."""
        if self.category == "counting":
            return [self.objects[0]] * self.count
        return list(self.objects)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _noun_phrase(obj: PromptObject) -> str:
    words = f"{obj.color} {obj.shape}" if obj.color else obj.shape
    return f"{_article(words)} {words}"


def format_prompt(parsed: ParsedPrompt) -> str:
    """The canonical prompt text of a structured prompt (inverse of `parse_prompt`)."""
    if parsed.category == "counting":
        return f"{COUNT_WORDS[parsed.count]} {parsed.objects[0].shape}s"
    if parsed.category == "position":
        a, b = parsed.objects
        return f"{_noun_phrase(a)} {parsed.relation} {_noun_phrase(b)}"
    return " and ".join(_noun_phrase(obj) for obj in parsed.objects)


_NUMBER_FROM_WORD = {word: n for n, word in COUNT_WORDS.items()}
_PLURAL_SHAPES = {f"{shape}s": shape for shape in SHAPES}


def _word_error(prompt: str, words: list[str], i: int, expected: str) -> ValueError:
    if i >= len(words):
        return ValueError(f"prompt {prompt!r} ends too early: expected {expected}")
    return ValueError(
        f"unexpected word {words[i]!r} (word {i + 1}) in prompt {prompt!r}: expected {expected}"
    )


def _parse_noun_phrase(prompt: str, words: list[str], i: int) -> tuple[PromptObject, int]:
    """`a|an [colour] shape` starting at words[i]; returns the object and the next index."""
    if i >= len(words) or words[i] not in ("a", "an"):
        raise _word_error(prompt, words, i, "'a' or 'an'")
    article = i
    i += 1
    color = None
    if i < len(words) and words[i] in COLORS:
        color = words[i]
        i += 1
    if i >= len(words) or words[i] not in SHAPES:
        raise _word_error(prompt, words, i, f"a shape ({', '.join(SHAPES)})")
    shape = words[i]
    if words[article] != _article(color or shape):
        raise _word_error(
            prompt, words, article, f"{_article(color or shape)!r} before {color or shape!r}"
        )
    return PromptObject(shape, color), i + 1


def parse_prompt(prompt: str) -> ParsedPrompt:
    """Parse a prompt of the canonical grammar; ValueError naming the offending word otherwise.

    Case, surrounding white space and one final period are forgiven; everything else must
    follow the spec's templates exactly (including `a` vs `an`, differing shapes in two-object
    prompts and differing colours in `color_attr`).
    """
    if not isinstance(prompt, str):
        raise ValueError(f"a prompt is a string, got {type(prompt).__name__}")
    words = prompt.strip().lower().removesuffix(".").split()
    if not words:
        raise ValueError("empty prompt: write e.g. 'a red circle'")

    if words[0] in _NUMBER_FROM_WORD:  # counting: `{n} {shape}s`
        if len(words) < 2 or words[1] not in _PLURAL_SHAPES:
            plural = ", ".join(_PLURAL_SHAPES)
            raise _word_error(prompt, words, 1, f"a plural shape ({plural})")
        if len(words) > 2:
            raise _word_error(prompt, words, 2, "the end of the prompt")
        obj = PromptObject(_PLURAL_SHAPES[words[1]])
        return ParsedPrompt("counting", (obj,), _NUMBER_FROM_WORD[words[0]])
    if words[0] not in ("a", "an"):
        raise _word_error(
            prompt, words, 0, f"'a', 'an' or a number ({', '.join(_NUMBER_FROM_WORD)})"
        )

    first, i = _parse_noun_phrase(prompt, words, 0)
    if i == len(words):
        category = "colors" if first.color else "single_object"
        return ParsedPrompt(category, (first,), 1)

    relation = None
    second_start = i + 1
    if words[i] in ("above", "below"):
        relation = words[i]
    elif words[i] == "to":
        for j, allowed in enumerate((("the",), ("left", "right"), ("of",)), start=i + 1):
            if j >= len(words) or words[j] not in allowed:
                raise _word_error(prompt, words, j, " or ".join(map(repr, allowed)))
        relation = " ".join(words[i : i + 4])
        second_start = i + 4
    elif words[i] != "and":
        raise _word_error(
            prompt, words, i, "'and', a relation (" + ", ".join(RELATIONS) + ") or the end"
        )
    second, j = _parse_noun_phrase(prompt, words, second_start)
    if j < len(words):
        raise _word_error(prompt, words, j, "the end of the prompt")
    second_shape_at = j - 1
    second_color_at = j - 2

    if relation is not None:
        for obj, at in ((first, 1), (second, second_start + 1)):
            if obj.color is None:
                raise _word_error(
                    prompt,
                    words,
                    at,
                    "a colour before the shape (position prompts "
                    f"name both colours: {', '.join(COLORS)})",
                )
        if first == second:
            raise _word_error(
                prompt,
                words,
                second_shape_at,
                "a second object differing in colour or shape from the first",
            )
        return ParsedPrompt("position", (first, second), 2, relation)

    if first.shape == second.shape:
        raise _word_error(prompt, words, second_shape_at, f"a shape other than {first.shape!r}")
    if (first.color is None) != (second.color is None):
        missing_at = second_start + 1 if second.color is None else 1
        raise _word_error(prompt, words, missing_at, "a colour for both objects or for neither")
    if first.color is None:
        return ParsedPrompt("two_object", (first, second), 2)
    if first.color == second.color:
        raise _word_error(prompt, words, second_color_at, f"a colour other than {first.color!r}")
    return ParsedPrompt("color_attr", (first, second), 2)


# ---------------------------------------------------------------------------------------------
# Relations
# ---------------------------------------------------------------------------------------------
def relation_offset_px(
    relation: str, center_a: tuple[float, float], center_b: tuple[float, float]
) -> float:
    """Signed offset by which `A relation B` holds (>= threshold means it holds)."""
    if relation not in _RELATION_AXIS:
        raise ValueError(f"unknown relation {relation!r}; choose one of {', '.join(RELATIONS)}")
    axis, sign = _RELATION_AXIS[relation]
    return sign * (center_b[axis] - center_a[axis])


def flip_relation(relation: str) -> str:
    """left <-> right, above <-> below."""
    return _FLIPPED_RELATION[relation]


# ---------------------------------------------------------------------------------------------
# Captions of scenes and sampling (prompt, scene) pairs
# ---------------------------------------------------------------------------------------------
def caption_for(scene: Scene, category: str, relation: str | None = None) -> str:
    """The canonical caption of `category` that truly describes `scene` (ValueError if none).

    The caption names the shapes in scene order. Colours are named only where the category names
    them. For `position`, `relation` is required and must hold between shapes 0 and 1 with the
    render rule (centres >= RENDER_MIN_OFFSET_PX apart along its axis).
    """
    shapes = scene.shapes
    n = len(shapes)
    if category in ("single_object", "colors"):
        if n != 1:
            raise ValueError(f"{category} captions describe scenes of 1 shape, this one has {n}")
        color = shapes[0].color if category == "colors" else None
        parsed = ParsedPrompt(category, (PromptObject(shapes[0].shape, color),), 1)
    elif category in ("two_object", "color_attr", "position"):
        if n != 2:
            raise ValueError(f"{category} captions describe scenes of 2 shapes, this one has {n}")
        named = category != "two_object"
        objects = tuple(PromptObject(s.shape, s.color if named else None) for s in shapes)
        if category == "position":
            if relation is None:
                raise ValueError(
                    f"position captions need a relation: one of {', '.join(RELATIONS)}"
                )
            if objects[0] == objects[1]:
                raise ValueError("position captions need two objects differing in colour or shape")
            offset = relation_offset_px(relation, shapes[0].center, shapes[1].center)
            if offset < RENDER_MIN_OFFSET_PX:
                raise ValueError(
                    f"'{relation}' holds by {offset:.1f} px in this scene; renders "
                    f"need >= {RENDER_MIN_OFFSET_PX} px"
                )
        elif objects[0].shape == objects[1].shape:
            raise ValueError(f"{category} captions need two different shapes")
        elif category == "color_attr" and objects[0].color == objects[1].color:
            raise ValueError("color_attr captions need two different colours")
        parsed = ParsedPrompt(category, objects, 2, relation if category == "position" else None)
    elif category == "counting":
        if n not in COUNT_WORDS or len({s.shape for s in shapes}) != 1:
            raise ValueError("counting captions describe 2 to 4 shapes of one kind")
        parsed = ParsedPrompt(category, (PromptObject(shapes[0].shape),), n)
    else:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return format_prompt(parsed)


def _place(rng: np.random.Generator, kinds: list[tuple[str, str]], relation: str | None) -> Scene:
    """Random sizes and positions for (shape, colour) pairs under the spec's placement rules.

    Rejection sampling: each shape draws integer positions until its box keeps the gap to the
    ones already placed; a dead end (or, for `position`, a pair whose centres are too close on
    the relation's axis) redraws the whole layout. For `position` the two objects swap roles
    when the relation holds the other way round, so no draw is wasted on direction.
    """
    limit = CANVAS_SIZE_PX - MARGIN_PX
    while True:
        placed: list[ShapeSpec] = []
        for shape, color in kinds:
            size = int(rng.integers(MIN_SIZE_PX, MAX_SIZE_PX + 1))
            max_top = math.floor(limit - shape_height_px(shape, size))
            for _ in range(_MAX_PLACEMENT_ATTEMPTS):
                left = int(rng.integers(MARGIN_PX, limit - size + 1))
                top = int(rng.integers(MARGIN_PX, max_top + 1))
                spec = ShapeSpec(shape, color, left, top, size)
                if all(_bbox_gap_px(spec.bbox, p.bbox) >= MIN_GAP_PX for p in placed):
                    placed.append(spec)
                    break
            else:
                break  # dead end: draw the whole layout again
        if len(placed) < len(kinds):
            continue
        if relation is None:
            return Scene(tuple(placed))
        a, b = placed
        offset = relation_offset_px(relation, a.center, b.center)
        if abs(offset) < RENDER_MIN_OFFSET_PX:
            continue
        # The two objects were drawn exchangeably, so swapping their roles keeps the
        # distribution and turns "holds the other way round" into "holds".
        return Scene((a, b) if offset > 0 else (b, a))


def _distinct(rng: np.random.Generator, names: tuple[str, ...] | list[str], k: int) -> list[str]:
    return [names[i] for i in rng.choice(len(names), size=k, replace=False)]


def _any(rng: np.random.Generator, names: tuple[str, ...] | list[str], k: int) -> list[str]:
    return [names[i] for i in rng.integers(0, len(names), size=k)]


def sample_scene(category: str, rng: np.random.Generator) -> tuple[Scene, str | None]:
    """A random scene that some caption of `category` describes, and the relation for `position`."""
    colors = list(COLORS)
    relation = None
    if category in ("single_object", "colors"):
        kinds = list(zip(_any(rng, SHAPES, 1), _any(rng, colors, 1), strict=True))
    elif category == "two_object":
        kinds = list(zip(_distinct(rng, SHAPES, 2), _any(rng, colors, 2), strict=True))
    elif category == "color_attr":
        kinds = list(zip(_distinct(rng, SHAPES, 2), _distinct(rng, colors, 2), strict=True))
    elif category == "counting":
        count = int(rng.integers(2, MAX_SHAPES + 1))
        kinds = list(zip(_any(rng, SHAPES, 1) * count, _any(rng, colors, count), strict=True))
    elif category == "position":
        relation = RELATIONS[int(rng.integers(len(RELATIONS)))]
        kinds = list(zip(_any(rng, SHAPES, 2), _any(rng, colors, 2), strict=True))
        while kinds[0] == kinds[1]:  # the two objects must be told apart
            kinds[1] = (kinds[1][0], colors[int(rng.integers(len(colors)))])
    else:
        raise ValueError(f"unknown category {category!r}; choose one of {', '.join(CATEGORIES)}")
    return _place(rng, kinds, relation), relation


def sample_prompt_and_scene(category: str, rng: np.random.Generator) -> tuple[str, Scene]:
    """A random canonical prompt of `category` and a scene it truly describes.

    The caption is derived from the scene (`caption_for`), so it is true by construction: in
    `single_object`, `two_object` and `counting` the colours are random and simply not named.
    """
    scene, relation = sample_scene(category, rng)
    return caption_for(scene, category, relation), scene


def scene_for_prompt(prompt: str, rng: np.random.Generator) -> Scene:
    """A random scene that `prompt` (canonical grammar) truly describes: the ground truth a
    perfect model would draw. Objects whose colour the prompt leaves open get a random colour.
    Used to validate the benchmark end to end (renders of the suite's prompts must pass)."""
    parsed = parse_prompt(prompt)
    colors = list(COLORS)
    kinds = [(obj.shape, obj.color or colors[int(rng.integers(len(colors)))])
             for obj in parsed.expected_objects()]
    while True:
        scene = _place(rng, kinds, parsed.relation)
        # `_place` may swap the two roles of a `position` pair; keep only draws where the
        # prompt's subject is the scene's subject, so the relation holds as written.
        first = scene.shapes[0]
        if parsed.relation is None or (first.shape, first.color) == kinds[0]:
            return scene


# ---------------------------------------------------------------------------------------------
# Training mixes
# ---------------------------------------------------------------------------------------------
DEFAULT_MIX: dict[str, float] = {category: 1.0 for category in CATEGORIES}  # equal shares


def validate_mix(mix: dict[str, float] | None) -> dict[str, float]:
    """Check a category -> weight mapping and return it normalised to sum 1 (None -> default)."""
    mix = DEFAULT_MIX if mix is None else mix
    for category, weight in mix.items():
        if category not in CATEGORIES:
            raise ValueError(
                f"unknown category {category!r} in mix; choose from {', '.join(CATEGORIES)}"
            )
        if not (math.isfinite(weight) and weight >= 0):
            raise ValueError(
                f"mix weight of {category!r} must be a finite number >= 0, got {weight}"
            )
    total = sum(mix.values())
    if total <= 0:
        raise ValueError("mix weights sum to 0: give at least one category a positive weight")
    return {category: mix[category] / total for category in CATEGORIES if mix.get(category, 0) > 0}


def parse_mix(text: str) -> dict[str, float]:
    """Parse `single_object=1,colors=2,...` into a mapping (validated, not normalised)."""
    mix: dict[str, float] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"mix item {item!r} is not CATEGORY=WEIGHT (e.g. colors=2)")
        try:
            mix[name.strip()] = float(value)
        except ValueError:
            raise ValueError(f"mix weight {value!r} of {name.strip()!r} is not a number") from None
    validate_mix(mix)
    return mix


def sample_training_example(
    rng: np.random.Generator, mix: dict[str, float] | None = None
) -> tuple[str, str, Scene]:
    """(category, caption, scene) with the category drawn from `mix` (for on-the-fly streams)."""
    weights = validate_mix(mix)
    names = list(weights)
    category = names[int(rng.choice(len(names), p=np.fromiter(weights.values(), float)))]
    prompt, scene = sample_prompt_and_scene(category, rng)
    return category, prompt, scene
