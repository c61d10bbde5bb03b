"""Classifier-free guidance (Ho & Salimans 2022), negative prompts, guidance rescale, thresholding.

CFG (Ho & Salimans 2022, eq. 6, written with scale w = 1 + their w):
    pred = pred_uncond + w (pred_cond - pred_uncond)
w = 1 gives the conditional prediction, w = 0 the unconditional one. A negative prompt is simply
the conditioning used in place of the empty prompt's: pass its encoding as `uncond`. Because the
conversions between eps, x0 and v are affine in the prediction with coefficients summing to one,
the combination is the same in every parameterization.

Guidance rescale (Lin et al. 2024, Sec. 3.4, eqs. 15-16), on the raw model output as in their
algorithm and in diffusers:
    pred_rescaled = pred_cfg * std(pred_cond) / std(pred_cfg)
    pred_final    = phi pred_rescaled + (1 - phi) pred_cfg
Dynamic thresholding (Saharia et al. 2022, Imagen, Sec. 2.3), for pixel-space models: per sample,
s = max(percentile_p(|x0_hat|), 1), x0_hat <- clip(x0_hat, -s, s) / s; eps_hat is re-derived from
the thresholded x0_hat (the Denoiser's x0_transform).

Both halves run in one batched forward pass: x (2B, ...), t (2B,), cond = concat(cond, uncond).

Guidance interval (Kynkaenniemi et al. 2024): guidance only where the noise level
sigma = sqrt((1 - ab_t) / ab_t) lies in [sigma_lo, sigma_hi]; elsewhere the conditional
prediction alone, which costs one forward pass of batch B instead of 2B. Outside the interval
the output equals scale 1.

Layout guidance (`plan_layout`, `layout_bias`; the section at the end): the objects of a
prompt's spatial relation steered to their sides through the cross-attention.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch

from pictor.diffusion.denoiser import Denoiser


@dataclass
class CFG:
    scale: float = 5.0  # w; 1 = conditional only, 0 = unconditional only
    uncond: Any = None  # conditioning of the empty or negative prompt
    rescale: float = 0.0  # phi in [0, 1] of Lin et al. 2024 (0.7 suggested)
    dynamic_threshold: float | None = None  # Imagen percentile p in (0, 1], e.g. 0.995; None = off
    # (sigma_lo, sigma_hi), sigma_hi None = no upper bound; None = guide every step
    interval: tuple[float, float | None] | None = None

    def __post_init__(self) -> None:
        if self.interval is not None:
            lo, hi = float(self.interval[0]), self.interval[1]
            hi = float("inf") if hi is None else float(hi)
            if not 0.0 <= lo <= hi:
                raise ValueError(f"interval must be (sigma_lo, sigma_hi) with 0 <= sigma_lo <= "
                                 f"sigma_hi, got {self.interval}")
            self.interval = (lo, hi)
        if not 0.0 <= self.rescale <= 1.0:
            raise ValueError(f"rescale (phi) must lie in [0, 1], got {self.rescale}")
        if self.dynamic_threshold is not None and not 0.0 < self.dynamic_threshold <= 1.0:
            raise ValueError(
                f"dynamic_threshold is a percentile in (0, 1] (e.g. 0.995), "
                f"got {self.dynamic_threshold}"
            )

    def apply(self, denoiser: Denoiser) -> Denoiser:
        """The guided denoiser (what every sampler calls when given guidance=self)."""
        return guided_model(denoiser, self)


def concat_conds(a: Any, b: Any) -> Any:
    """Concatenate two conditioning objects along the batch: tensors on dim 0, dicts key by key,
    lists/tuples item by item, None with None. Tensors must agree beyond the batch dimension."""
    if a is None and b is None:
        return None
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        if a.shape[1:] != b.shape[1:]:
            raise ValueError(
                f"cannot batch cond {tuple(a.shape)} with uncond {tuple(b.shape)}: "
                "encode both to the "
                "same length (e.g. pad both to the text encoder's max_length)"
            )
        return torch.cat([a, b.to(device=a.device, dtype=a.dtype)], dim=0)
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            raise ValueError(f"cond keys {sorted(a)} differ from uncond keys {sorted(b)}")
        return {k: concat_conds(a[k], b[k]) for k in a}
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return type(a)(concat_conds(x, y) for x, y in zip(a, b, strict=True))
    raise ValueError(
        f"cannot batch cond of type {type(a).__name__} with uncond of type {type(b).__name__}; "
        "pass tensors, dicts of tensors, or None for both"
    )


def expand_cond(cond: Any, batch_size: int) -> Any:
    """Repeat a batch-1 conditioning (e.g. one encoded empty prompt) to batch_size."""
    if isinstance(cond, torch.Tensor):
        if cond.shape[0] == batch_size:
            return cond
        if cond.shape[0] != 1:
            raise ValueError(
                f"uncond batch {cond.shape[0]} must be 1 or equal to the batch {batch_size}"
            )
        return cond.expand(batch_size, *cond.shape[1:])
    if isinstance(cond, dict):
        return {k: expand_cond(v, batch_size) for k, v in cond.items()}
    if isinstance(cond, (list, tuple)):
        return type(cond)(expand_cond(v, batch_size) for v in cond)
    return cond


def combine(pred_cond: torch.Tensor, pred_uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """pred_uncond + scale (pred_cond - pred_uncond)."""
    return pred_uncond + scale * (pred_cond - pred_uncond)


def rescale_guidance(pred_cfg: torch.Tensor, pred_cond: torch.Tensor, phi: float) -> torch.Tensor:
    """Lin et al. 2024 eqs. 15-16; std over all but the batch dimension. (B, ...) -> (B, ...)."""
    dims = list(range(1, pred_cfg.ndim))
    rescaled = pred_cfg * (
        pred_cond.std(dim=dims, keepdim=True) / pred_cfg.std(dim=dims, keepdim=True)
    )
    return phi * rescaled + (1 - phi) * pred_cfg


def dynamic_threshold(x0: torch.Tensor, percentile: float) -> torch.Tensor:
    """Imagen dynamic thresholding: s = max(quantile_p |x0|, 1) per sample; clip to [-s, s], / s."""
    flat = x0.reshape(x0.shape[0], -1)  # (B, D)
    dtype = torch.promote_types(x0.dtype, torch.float32)  # quantile needs float32 or float64
    s = torch.quantile(flat.abs().to(dtype), percentile, dim=1).clamp(min=1.0)  # (B,)
    s = s.to(x0.dtype).reshape(-1, *([1] * (x0.ndim - 1)))
    return torch.maximum(torch.minimum(x0, s), -s) / s


def _inside(t: torch.Tensor, interval: tuple[float, float], schedule) -> bool:
    """Whether the noise level of timestep(s) t (B,) lies in [sigma_lo, sigma_hi] (the whole batch
    shares one step; a batch that straddles a bound counts as inside)."""
    steps = t.detach().cpu().tolist()
    if all(float(s).is_integer() for s in steps):  # the table itself: no tensor arithmetic
        sigmas = [float(schedule.sigmas[int(s)]) for s in steps]
        return any(interval[0] <= s <= interval[1] for s in sigmas)
    ab = schedule.alpha_bar_at(t.detach().double().cpu())
    sigma = ((1 - ab) / ab).sqrt()  # inf where ab = 0 (zero terminal SNR)
    return bool(((sigma >= interval[0]) & (sigma <= interval[1])).any())


def guided_model(denoiser: Denoiser, guidance: CFG) -> Denoiser:
    """A Denoiser whose output is the (rescaled) CFG combination, x0 optionally thresholded."""
    base = denoiser.model
    scale, uncond, phi = float(guidance.scale), guidance.uncond, float(guidance.rescale)
    interval = guidance.interval

    if scale == 1.0:
        model = base  # conditional only: the uncond half would get weight 0
    elif uncond is None:
        raise ValueError(
            "classifier-free guidance with scale != 1 needs CFG.uncond: encode the empty prompt "
            "(or a negative prompt) with the same text encoder and pass it as uncond"
        )
    elif scale == 0.0:

        def model(x_t, t, cond):  # unconditional only
            return base(x_t, t, expand_cond(uncond, x_t.shape[0]))
    else:

        def model(x_t, t, cond):  # x_t (B, ...), t (B,)
            batch_size = x_t.shape[0]
            if interval is not None and not _inside(t, interval, denoiser.schedule):
                return base(x_t, t, cond)
            both = base(
                torch.cat([x_t, x_t]),
                torch.cat([t, t]),
                concat_conds(cond, expand_cond(uncond, batch_size)),
            )  # (2B, ...)
            pred_cond, pred_uncond = both[:batch_size], both[batch_size:]
            pred = combine(pred_cond, pred_uncond, scale)
            return rescale_guidance(pred, pred_cond, phi) if phi > 0 else pred

    x0_transform = denoiser.x0_transform
    if guidance.dynamic_threshold is not None:
        percentile, inner = float(guidance.dynamic_threshold), denoiser.x0_transform

        def x0_transform(x0):
            return dynamic_threshold(inner(x0) if inner is not None else x0, percentile)

    return Denoiser(
        model=model,
        schedule=denoiser.schedule,
        prediction_type=denoiser.prediction_type,
        x0_transform=x0_transform,
    )


# ----------------------------------------------------------------------------------------------
# Layout guidance
# ----------------------------------------------------------------------------------------------
# Layout guidance: steer where the objects of a prompt's spatial relation are drawn.
#
# "a red circle to the left of a blue square" states a layout, and the layout of an image is
# decided in the first, high-noise sampler steps, where x_t shows nothing yet. A small U-Net that
# binds words to objects well can still place them at chance there (docs/grounding.md: the
# attention of shapes-v5 lands on the right object at t = 500 for 99% of training examples, at
# t = 990 for 54%). Layout guidance supplies the missing decision at sampling time, without
# training:
#
# 1. a layout planner reads the relation from the prompt: `plan_layout` finds one phrase
#    "<A> <relation> <B>" (to the left of, to the right of, above, below, ...) and places A's
#    centre at `offset` along the relation's direction and B's opposite (image coordinates in
#    [-1, 1]); the layout-from-the-prompt step of LLM-grounded diffusion (Lian et al. 2023), with
#    a grammar in place of the language model;
# 2. while t >= `min_t`, every cross-attention of the conditional pass adds to the scores of each
#    object's words a bias of strength * (2 g - 1), g a Gaussian of width `sigma` around the
#    object's centre: the words are pulled into their region and pushed out of the rest of the
#    image (attention modulation, as DenseDiffusion, Kim et al. 2023, applies it to layouts a
#    user draws). The unconditional pass of classifier-free guidance is left alone.
#
# Which words are steered: a model trained with the grounding loss on colour words only
# (training.grounding_words = color) has those words' attention on their objects, so those are
# steered (each phrase's colour words, or all its content words if it names no colour); otherwise
# every content word of each phrase (articles excluded).
#
# Prompts without exactly one such relation get no layout, and the images are those of the
# plain model. The defaults were chosen on the `validation-shapes` suite's position prompts (not
# the benchmark's): shapes-v5's position score there went from 0.48 to 0.94 (docs/grounding.md).
#
# Count emphasis (rule "count"): how many objects there are is decided in the same high-noise
# steps, and a count word weighs little among the prompt's tokens ("three stars" is drawn with
# four stars about a third of the time by shapes-v5). While t >= `min_t`, the scores of a count
# word's tokens get `count_strength` added at every pixel, so that every pixel reads more of the
# count (prompt weighting by attention, cf. the token re-weighting of Prompt-to-Prompt, Hertz et
# al. 2022). Chosen on validation-shapes' counting prompts with 320 images over three seed sets
# (not the benchmark's): 0.766 -> 0.825 at count_strength 10 (docs/grounding.md).
#
# The rules (LAYOUT_RULES) are recorded with each image, so that images made before a rule
# existed are reproduced without it.

LayoutWords = Literal["color", "all"]

# relation phrase -> direction (dx, dy) of the first object from the second (y grows downward)
RELATIONS: dict[str, tuple[int, int]] = {
    "to the left of": (-1, 0),
    "to the right of": (1, 0),
    "left of": (-1, 0),
    "right of": (1, 0),
    "above": (0, -1),
    "over": (0, -1),
    "on top of": (0, -1),
    "below": (0, 1),
    "under": (0, 1),
    "underneath": (0, 1),
    "beneath": (0, 1),
}
_RELATION_RE = re.compile(
    r"\b(" + "|".join(sorted((re.escape(r) for r in RELATIONS), key=len, reverse=True)) + r")\b")
_WORD_RE = re.compile(r"[\w'-]+")
ARTICLES = frozenset({"a", "an", "the", "one", "some"})
NUMBER_WORDS = frozenset({
    "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve",
})
_NUMBER_RE = re.compile(r"\b(" + "|".join(sorted(NUMBER_WORDS)) + r"|[2-9]|1[0-2])\b")
# The rules of layout guidance, in the order they were added; records list the ones applied.
LAYOUT_RULES = ("relation", "count")
COLOR_WORDS = frozenset({
    "red", "green", "blue", "yellow", "orange", "purple", "cyan", "white", "black", "gray",
    "grey", "brown", "pink", "magenta", "violet", "gold", "silver", "beige", "navy", "teal",
})


@dataclass(frozen=True)
class LayoutSettings:
    """How hard and how long the layout is imposed (defaults: see the module docstring)."""

    strength: float = 20.0  # attention-logit bias at the region's centre (-strength far away)
    offset: float = 0.5     # object centres at +-offset along the relation's axis, in [-1, 1]
    sigma: float = 0.5      # width of each object's region, same units
    min_t: float = 300.0    # steer the steps whose timestep is >= min_t (of T = 1000)
    count_strength: float = 10.0  # attention-logit bias of count words at every pixel

    def __post_init__(self) -> None:
        if not self.strength >= 0:
            raise ValueError(f"layout strength must be >= 0, got {self.strength}")
        if not self.count_strength >= 0:
            raise ValueError(f"count strength must be >= 0, got {self.count_strength}")
        if not self.sigma > 0:
            raise ValueError(f"layout sigma must be > 0, got {self.sigma}")
        if not 0 <= self.offset <= 1:
            raise ValueError(f"layout offset must lie in [0, 1], got {self.offset}")


@dataclass(frozen=True)
class LayoutObject:
    """One object of the plan: the character spans of its steered words and its centre."""

    phrase: str
    spans: tuple[tuple[int, int], ...]
    center: tuple[float, float]  # (x, y) in [-1, 1], y down


@dataclass(frozen=True)
class LayoutPlan:
    relation: str  # the relation phrase as written (lower case)
    objects: tuple[LayoutObject, LayoutObject]


def _steered_spans(text: str, start: int, end: int, words: LayoutWords
                   ) -> tuple[tuple[int, int], ...]:
    found = [(m.start() + start, m.end() + start, m.group().lower())
             for m in _WORD_RE.finditer(text[start:end])]
    content = [(a, b, w) for a, b, w in found if w not in ARTICLES]
    if words == "color":
        colors = [(a, b, w) for a, b, w in content if w in COLOR_WORDS]
        content = colors or content
    return tuple((a, b) for a, b, _ in content)


def plan_layout(prompt: str, words: LayoutWords = "all",
                settings: LayoutSettings | None = None) -> LayoutPlan | None:
    """The layout a prompt states: A and B on their sides for exactly one "<A> <relation> <B>"
    with words on both sides, else None. Spans index into `prompt` itself."""
    if words not in ("color", "all"):
        raise ValueError(f"layout words must be 'color' or 'all', got {words!r}")
    settings = settings or LayoutSettings()
    offset = settings.offset
    text = prompt.lower()
    end = len(text.rstrip().rstrip("."))
    matches = list(_RELATION_RE.finditer(text))
    if len(matches) != 1:
        return None
    m = matches[0]
    a = _steered_spans(text, 0, m.start(), words)
    b = _steered_spans(text, m.end(), end, words)
    if not a or not b:
        return None
    dx, dy = RELATIONS[m.group()]
    return LayoutPlan(m.group(), (
        LayoutObject(prompt[: m.start()].strip(), a, (offset * dx + 0.0, offset * dy + 0.0)),
        LayoutObject(prompt[m.end(): end].strip(), b, (-offset * dx + 0.0, -offset * dy + 0.0)),
    ))


def layout_bias(plan: LayoutPlan, offsets: Sequence[tuple[int, int]], length: int, side: int,
                settings: LayoutSettings = LayoutSettings()) -> torch.Tensor:
    """The attention-logit bias (1, length, side, side) of a plan: for each token whose
    character span (`offsets`, the tokenizer's, (0, 0) for special tokens) overlaps a steered
    word of an object, strength * (2 exp(-d^2 / 2 sigma^2) - 1) with d the distance of each
    pixel centre from the object's centre; 0 for every other token."""
    coords = (torch.arange(side, dtype=torch.float32) + 0.5) / side * 2 - 1
    yy, xx = torch.meshgrid(coords, coords, indexing="ij")
    bias = torch.zeros(1, length, side, side)
    for obj in plan.objects:
        cx, cy = obj.center
        g = torch.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * settings.sigma ** 2))
        region = settings.strength * (2 * g - 1)
        for pos in _tokens_of(obj.spans, offsets, length):
            bias[0, pos] = region
    return bias


def _tokens_of(spans: Sequence[tuple[int, int]], offsets: Sequence[tuple[int, int]],
               length: int) -> list[int]:
    """Positions (< length) of the tokens whose character span (`offsets`, (0, 0) for special
    tokens) overlaps one of `spans`."""
    return [pos for pos, (a, b) in enumerate(offsets[:length])
            if b > a and any(a < e and b > s for s, e in spans)]


def count_spans(prompt: str) -> tuple[tuple[int, int], ...]:
    """Character spans of the count words of a prompt ("two" .. "twelve", 2 .. 12)."""
    return tuple(m.span() for m in _NUMBER_RE.finditer(prompt.lower()))


def layout_rules(value: bool | Sequence[str] | None) -> tuple[str, ...]:
    """The layout rules a `layout` argument asks for: True -> every rule (LAYOUT_RULES), False
    or None -> none, a sequence of rule names -> those, in LAYOUT_RULES order (ValueError
    naming the rules for an unknown one)."""
    if value is None or value is False:
        return ()
    if value is True:
        return LAYOUT_RULES
    if isinstance(value, str):
        value = (value,)
    unknown = [r for r in value if r not in LAYOUT_RULES]
    if unknown:
        raise ValueError(f"unknown layout rule(s) {unknown}; the rules are {list(LAYOUT_RULES)}")
    return tuple(r for r in LAYOUT_RULES if r in value)


Offsets = Sequence[tuple[int, int]]


def prompt_layout_bias(prompt: str, offsets: Offsets | Callable[[], Offsets], length: int,
                       side: int, rules: Sequence[str] = LAYOUT_RULES, words: LayoutWords = "all",
                       settings: LayoutSettings = LayoutSettings()) -> torch.Tensor | None:
    """The attention-logit bias (1, length, side, side) that the layout rules give `prompt`: its
    relation's regions ("relation", `layout_bias`) plus count_strength at every pixel for the
    tokens of its count words ("count"); None if no rule applies to the prompt. offsets: the
    tokens' character spans, or a function giving them, called only if a rule applies (so a
    prompt without a relation or a count is never tokenized for this)."""
    rules = layout_rules(rules)
    plan = plan_layout(prompt, words, settings) if "relation" in rules else None
    counts = count_spans(prompt) if "count" in rules and settings.count_strength else ()
    if plan is None and not counts:
        return None
    if callable(offsets):
        offsets = offsets()
    bias = (layout_bias(plan, offsets, length, side, settings) if plan is not None
            else torch.zeros(1, length, side, side))
    for pos in _tokens_of(counts, offsets, length):
        bias[0, pos] += settings.count_strength
    return bias
