"""Grounding loss: the cross-attention of each object word should fall on that object.

A text-conditional U-Net reads the prompt only through cross-attention, and with the plain
denoising loss nothing says *where* in the image a word's information must go: a small model
learns "a red circle" well but mixes up "a red circle and a blue square" (which colour goes on
which shape) and draws "A to the left of B" with the sides at chance. TokenCompose (Wang et al.
2024) adds a token-level loss on the cross-attention maps, from object masks: for each word that
names an object, the share of that word's attention (over pixels) that lands outside the
object's mask is penalised,

    L_token = mean over (layer, word) of (1 - sum_p M(p) A(p, word) / sum_p A(p, word))^2,

with A the cross-attention probabilities (averaged over heads) at a layer's pixels p and M the
object's mask at that layer's resolution. The training loss is the denoising loss +
`training.grounding_loss_weight` x L_token.

Masks need ground truth. Shapes-world data (`pictor data synth`) records each image's category
and example seed, and the scene is a pure function of them, so the masks are rebuilt exactly
(`build_grounding_table`); every rebuilt caption is checked against the stored one. The words
grounded are each object's shape word and, where the caption names one, its colour word (so
colour-to-shape binding is supervised too); in `counting` the plural shape word grounds to all
the shapes together. Each word's tokens (a word may be split into several word pieces) come
from the frozen encoder's own tokenizer, so the positions are the ones the U-Net sees.

Paraphrased data (`pictor data synth --captions paraphrase|mix`) takes the same path: a record
also holds its canonical caption and how its text was made ("canonical" or "paraphrase-v1"),
the caption is rebuilt from the example's caption stream (pictor.data.captions), and the
words are the `Caption`'s spans, synonyms included ("crimson" names the red object). Masks
follow the canonical caption's object order, which the spans' entities use too.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "GroundingTable",
    "build_grounding_table",
    "centroid_loss",
    "grounding_loss",
    "layout_prior_loss",
    "object_words",
    "record_cross_attention",
    "scene_masks",
]

MAX_ENTITIES = 2  # masks per caption: one per named object (counting: all shapes as one)
MIN_PAIRS = 8     # columns of the pair table: 2 objects x (colour + shape) x 2 word pieces; more
                  # when a caption needs more (a paraphrase: "five-pointed star" is 4 pieces)


@dataclass
class GroundingTable:
    """Per training example: which text tokens name which object, and the objects' masks.

    tokens: (N, P) int64, positions in the encoder's token sequence, -1 = unused pair
    entity: (N, P) int64, which of the example's masks each pair's token names (0 or 1)
    masks:  (N, E, R, R) uint8, object coverage x 255 at the diffusion input's resolution R
    Examples without ground truth have no pairs (all -1) and add nothing to the loss.
    """

    tokens: torch.Tensor
    entity: torch.Tensor
    masks: torch.Tensor
    skipped: int = 0  # examples whose caption did not match the rebuilt scene

    def batch(self, indices: torch.Tensor, device: torch.device | str
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(tokens, entity, masks in [0, 1] float32) of the examples at `indices`."""
        idx = indices.cpu()
        return (self.tokens.index_select(0, idx).to(device),
                self.entity.index_select(0, idx).to(device),
                self.masks.index_select(0, idx).to(device=device, dtype=torch.float32) / 255.0)


# ----------------------------------------------------------------------------------------------
# Which words name which object
# ----------------------------------------------------------------------------------------------


GROUNDING_WORDS = ("all", "color")  # training.grounding_words: which object words are grounded


def object_words(caption: str, words: str = "all") -> list[tuple[int, int, int]]:
    """(start, end, entity) character spans of the words of a canonical shapes-world caption
    that name an object: each object's colour word (if any) and shape word, entity = the
    object's index in caption order (counting: the plural shape word, entity 0). With
    words="color" only the colour words (uncoloured objects and counting then have none).

    ValueError if the caption is not of the canonical grammar (pictor.data.shapes.parse_prompt).
    The spans are those of `pictor.data.captions.canonical_caption`.
    """
    from pictor.data.captions import canonical_caption
    from pictor.data.shapes import parse_prompt

    _check_words(words)
    caption_spans = canonical_caption(parse_prompt(caption))
    body = caption.strip().lower().removesuffix(".")
    if body != caption_spans.text:
        raise ValueError(f"caption {caption!r} is not written as the canonical grammar writes "
                         f"it: write {caption_spans.text!r}")
    shift = len(caption) - len(caption.lstrip())  # the spans of the stripped text
    return [(a + shift, b + shift, entity)
            for a, b, entity, _ in _grounded_spans(caption_spans.spans, words)]


def _check_words(words: str) -> None:
    if words not in GROUNDING_WORDS:
        raise ValueError(f"grounding words must be one of {GROUNDING_WORDS}, got {words!r}")


def _grounded_spans(spans, words: str):
    """The spans grounded under training.grounding_words (all, or the colour words only)."""
    return [span for span in spans if words == "all" or span.kind == "color"]


def _token_pairs(offsets: Sequence[tuple[int, int]], spans) -> list[tuple[int, int]]:
    """[(token position, entity)] of the tokens (character `offsets` from the tokenizer) that
    overlap the spans, in span order."""
    return [(pos, entity) for start, end, entity, _ in spans
            for pos, (a, b) in enumerate(offsets)
            if b > a and a < end and b > start]  # special tokens have empty spans


# ----------------------------------------------------------------------------------------------
# Masks from the shapes-world scenes
# ----------------------------------------------------------------------------------------------


def scene_masks(caption: str, scene, resolution: int) -> np.ndarray:
    """(E, R, R) float32 coverage in [0, 1] of each object the caption names, area-averaged
    from the 64x64 render to R x R (R must divide 64); entity order as in `object_words`."""
    from pictor.data.shapes import CANVAS_SIZE_PX, parse_prompt, shape_coverage

    if CANVAS_SIZE_PX % resolution:
        raise ValueError(f"mask resolution {resolution} does not divide {CANVAS_SIZE_PX}")
    parsed = parse_prompt(caption)
    full = np.zeros((MAX_ENTITIES, CANVAS_SIZE_PX, CANVAS_SIZE_PX), dtype=np.float32)
    used = [False] * len(scene.shapes)
    for entity, obj in enumerate(parsed.objects):
        for i, spec in enumerate(scene.shapes):
            matches = spec.shape == obj.shape and (obj.color is None or spec.color == obj.color)
            if used[i] or not matches:
                continue
            alpha = shape_coverage(spec.shape, spec.size_px)
            h, w = alpha.shape
            full[entity, spec.top:spec.top + h, spec.left:spec.left + w] += alpha
            used[i] = True
            if parsed.category != "counting":
                break  # one shape per named object; counting takes them all
        else:
            if parsed.category != "counting":
                raise ValueError(f"no shape in the scene matches {obj} of {caption!r}")
    if not all(used):
        raise ValueError(f"the scene holds shapes that {caption!r} does not name")
    f = CANVAS_SIZE_PX // resolution
    return full.reshape(MAX_ENTITIES, resolution, f, resolution, f).mean(axis=(2, 4))


@dataclass(frozen=True)
class _Truth:
    """What a `pictor data synth` record says about its example (pictor.data.synth)."""

    category: str
    seed: int  # example seed
    canonical: str | None  # the canonical caption (None: written before captions were)
    captions: str  # how the text was made: "canonical" or "paraphrase-v<N>"


def _synth_records(dataset) -> list[_Truth | None]:
    """The ground truth of each example made by `pictor data synth`, else None."""
    out: list[_Truth | None] = []
    for obj in dataset.extras:
        category, seed = obj.get("category"), obj.get("seed")
        canonical, captions = obj.get("canonical"), obj.get("captions", "canonical")
        ok = (isinstance(category, str) and isinstance(seed, int) and isinstance(captions, str)
              and (canonical is None or isinstance(canonical, str)))
        out.append(_Truth(category, seed, canonical, captions) if ok else None)
    return out


def _rebuild(truth: _Truth, text: str, namespace: str):
    """(caption, scene) of a record, rebuilt from its seed; None when the record's canonical
    caption or text is not what its seed gives (edited metadata, another renderer or caption
    language version)."""
    from pictor.data.captions import rebuild_caption
    from pictor.data.shapes import parse_prompt, sample_prompt_and_scene
    from pictor.data.synth import caption_rng, example_rng

    canonical, scene = sample_prompt_and_scene(truth.category, example_rng(namespace, truth.seed))
    if truth.canonical not in (None, canonical):
        return None
    try:
        caption = rebuild_caption(parse_prompt(canonical), truth.captions,
                                  caption_rng(namespace, truth.seed))
    except ValueError:
        return None
    return (caption, scene) if caption.text == text else None


def build_grounding_table(dataset, tokenizer, *, max_length: int, resolution: int,
                          words: str = "all", namespace: str = "train", log=print,
                          progress: bool = True) -> GroundingTable:
    """Masks and token pairs for every example of a shapes-world data set (module docstring).

    Raises ValueError when no example carries shapes-world ground truth (category and seed),
    i.e. the data was not made by `pictor data synth`: the grounding loss needs object masks.
    """
    from tqdm import tqdm

    _check_words(words)
    t0 = time.perf_counter()
    records = _synth_records(dataset)
    if not any(r is not None for r in records):
        raise ValueError(
            f"the grounding losses (training.grounding_loss_weight, grounding_centroid_weight) "
            f"need object masks, which exist only for "
            f"shapes-world data made by `pictor data synth` (its records carry 'category' and "
            f"'seed'); {dataset.root} has none. Set both weights to 0")
    texts = dataset.captions
    n = len(texts)
    masks = torch.zeros((n, MAX_ENTITIES, resolution, resolution), dtype=torch.uint8)
    spans: dict[int, list] = {}  # row -> grounded spans of its caption
    rows = tqdm(enumerate(zip(texts, records, strict=True)), total=n, desc="grounding",
                unit="img", disable=not progress, mininterval=1.0)
    for i, (text, truth) in rows:
        rebuilt = None if truth is None else _rebuild(truth, text, namespace)
        if rebuilt is None:
            continue
        caption, scene = rebuilt
        m = scene_masks(caption.canonical, scene, resolution)
        masks[i] = torch.from_numpy(np.rint(m * 255.0).astype(np.uint8))
        spans[i] = _grounded_spans(caption.spans, words)
    unique = sorted({texts[i] for i in spans})
    offsets = dict(zip(unique, tokenizer(unique, truncation=True, max_length=max_length,
                                         return_offsets_mapping=True)["offset_mapping"],
                       strict=True)) if unique else {}
    pairs = {i: _token_pairs(offsets[texts[i]], s) for i, s in spans.items()}
    width = max([MIN_PAIRS, *map(len, pairs.values())])
    tokens = torch.full((n, width), -1, dtype=torch.int64)
    entity = torch.zeros((n, width), dtype=torch.int64)
    for i, row in pairs.items():
        for j, (pos, ent) in enumerate(row):
            tokens[i, j], entity[i, j] = pos, ent
    skipped = n - len(spans)
    log(f"grounding: object masks and token pairs for {n - skipped} of {n} examples "
        f"({skipped} without shapes-world ground truth) in {time.perf_counter() - t0:.0f} s")
    return GroundingTable(tokens, entity, masks, skipped)


# ----------------------------------------------------------------------------------------------
# Recording cross-attention and the loss
# ----------------------------------------------------------------------------------------------


@contextmanager
def record_cross_attention(model: nn.Module, min_resolution: int = 1
                           ) -> Iterator[list[torch.Tensor]]:
    """Within the block, every CrossAttention of `model` on a feature map of side >=
    `min_resolution` appends its probabilities, averaged over heads, (B, N, L) float32 with
    gradients, to the yielded list (square feature maps: N = side^2)."""
    from pictor.networks.layers import CrossAttention

    records: list[torch.Tensor] = []
    modules = [m for m in model.modules() if isinstance(m, CrossAttention)]
    for m in modules:
        m.record = records
        m.record_min_tokens = min_resolution * min_resolution
    try:
        yield records
    finally:
        for m in modules:
            m.record = None


def _mean_over_layers(records: Sequence[torch.Tensor], tokens: torch.Tensor,
                      entity: torch.Tensor, masks: torch.Tensor, keep: torch.Tensor | None,
                      term) -> torch.Tensor:
    """Mean over layers of term(side, m, a, valid) -> scalar, where per layer m (B, P, N) is each
    pair's object mask area-averaged to the layer's side x side pixels, a (B, P, N) the pair's
    token's attention over those pixels and valid (B, P) the pairs to use (used tokens of kept
    examples). 0 (with a graph) when there is nothing to ground."""
    valid = tokens >= 0                                        # (B, P)
    if keep is not None:
        valid = valid & keep[:, None]
    if not records or not bool(valid.any()):
        return sum((r.sum() * 0.0 for r in records), torch.zeros((), device=tokens.device))
    tok = tokens.clamp(min=0)
    ent = entity.clamp(min=0)
    per_layer = []
    for probs in records:
        b, n, _ = probs.shape
        side = math.isqrt(n)
        if side * side != n:
            raise ValueError(f"grounding needs square feature maps, got {n} pixels")
        m = F.adaptive_avg_pool2d(masks, side).flatten(2)      # (B, E, N): area average
        m = m.gather(1, ent[:, :, None].expand(b, ent.shape[1], n))            # (B, P, N)
        a = probs.gather(2, tok[:, None, :].expand(b, n, tok.shape[1])).transpose(1, 2)
        per_layer.append(term(side, m, a, valid))
    return torch.stack(per_layer).mean()


def grounding_loss(records: Sequence[torch.Tensor], tokens: torch.Tensor, entity: torch.Tensor,
                   masks: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """TokenCompose's token loss (module docstring), averaged over layers and valid pairs.

    records: [(B, N, L)] attention probabilities; tokens, entity: (B, P) (tokens -1 = unused);
    masks: (B, E, R, R) in [0, 1]; keep: (B,) bool, examples to use (e.g. caption not dropped).
    Returns a scalar; 0 (with a graph) when there is nothing to ground.
    """
    def term(side, m, a, valid):
        w = valid.float()
        inside = (a * m).sum(-1) / a.sum(-1).clamp_min(1e-12)  # (B, P): share in the mask
        return ((1.0 - inside) ** 2 * w).sum() / w.sum()

    return _mean_over_layers(records, tokens, entity, masks, keep, term)


def pixel_coordinates(side: int, device: torch.device) -> torch.Tensor:
    """(N, 2) (x, y) of the pixel centres of a side x side map, in [-1, 1], row-major."""
    c = (torch.arange(side, device=device, dtype=torch.float32) + 0.5) / side * 2.0 - 1.0
    y, x = torch.meshgrid(c, c, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], dim=1)


def centroid_loss(records: Sequence[torch.Tensor], tokens: torch.Tensor, entity: torch.Tensor,
                  masks: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
    """Squared distance between the centroid of each grounded word's attention and the centroid
    of its object's mask, in image coordinates [-1, 1]^2, averaged over layers and valid pairs
    (arguments as `grounding_loss`; pairs whose mask is empty are skipped).

    The token loss rewards attention *inside* the mask, which at high noise, where x_t does not
    yet show the object, is worth little: spreading a small object's word over the correct half
    of the image instead of all of it lowers (1 - share)^2 by ~10%. Yet that is where the layout
    is decided. The centroid is linear in the attention, so its best value at high noise is the
    expected object centre given the prompt, which the relation of a `position` prompt moves by
    ~0.8 of the image between "left of" and "right of": a large, low-variance signal that the
    word's attention (and so where its features are written) must follow the relation.
    """
    def term(side, m, a, valid):
        xy = pixel_coordinates(side, a.device)                                 # (N, 2)
        mass = m.sum(-1)                                                       # (B, P)
        w = (valid & (mass > 1e-6)).float()
        c_mask = (m @ xy) / mass.clamp_min(1e-12)[..., None]                   # (B, P, 2)
        c_attn = (a @ xy) / a.sum(-1).clamp_min(1e-12)[..., None]              # (B, P, 2)
        d2 = (c_attn - c_mask).pow(2).sum(-1)                                  # (B, P)
        return (d2 * w).sum() / w.sum().clamp_min(1.0)

    return _mean_over_layers(records, tokens, entity, masks, keep, term)


def layout_prior_loss(logits: torch.Tensor, token_mask: torch.Tensor, tokens: torch.Tensor,
                      entity: torch.Tensor, masks: torch.Tensor,
                      keep: torch.Tensor | None = None) -> torch.Tensor:
    """The learned layout prior's supervised loss (pictor.networks.layout_prior): KL(target ||
    q) per real token, where q = softmax of the prior's logits over the S x S pixels and the
    target is the token's object mask, normalised, for the grounded tokens (the pairs of the
    grounding table) and uniform for every other real token (articles, relation words: they
    belong nowhere in particular, and a uniform prior adds no bias). The mean over grounded
    tokens plus the mean over the others, each 0 at its optimum E[target | prompt] when the
    prompt decides it. Examples not kept (a dropped caption) add nothing.

    logits (B, L, S, S); token_mask (B, L) bool; tokens, entity (B, P) (tokens -1 = unused);
    masks (B, E, S, S) in [0, 1]; keep (B,) bool -> scalar (0 with a graph when empty)."""
    b, length, s, _ = logits.shape
    n = s * s
    log_q = torch.log_softmax(logits.float().flatten(2), dim=-1)           # (B, L, N)
    real = token_mask.clone()
    if keep is not None:
        real &= keep[:, None]
    target = torch.full_like(log_q, 1.0 / n)                              # (B, L, N)
    grounded = torch.zeros_like(real)                                     # (B, L)
    valid = (tokens >= 0) & (tokens < length)
    if keep is not None:
        valid &= keep[:, None]
    flat = masks.float().flatten(2)                                       # (B, E, N)
    mass = flat.sum(-1)                                                   # (B, E)
    rows, cols = valid.nonzero(as_tuple=True)
    if len(rows):
        ent = entity[rows, cols]
        ok = mass[rows, ent] > 1e-6
        rows, cols, ent = rows[ok], cols[ok], ent[ok]
        pos = tokens[rows, cols]
        target[rows, pos] = flat[rows, ent] / mass[rows, ent][:, None]
        grounded[rows, pos] = True
    entropy = -(target * target.clamp_min(1e-30).log()).sum(-1)          # (B, L)
    kl = -(target * log_q).sum(-1) - entropy                              # (B, L)
    parts = []
    for sel in (grounded & real, real & ~grounded):
        if bool(sel.any()):
            parts.append(kl[sel].mean())
    if not parts:
        return logits.sum() * 0.0
    return torch.stack(parts).sum()
