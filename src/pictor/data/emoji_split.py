"""The held-out split of the emoji data set: which records training never sees, and why.

A record is one drawing: an emoji *identity* (its base code, "1F44B" for every waving hand), the
skin tones of this drawing (() or ("1F3FB",) or, for couples, two of them) and a style (noto,
twemoji, openmoji). Each record gets one split:

- `heldout_unseen` (c): identities held out in every style and tone. Nothing of them is
  trained on; expected hard, reported apart.
- `heldout_style` (a): an identity drawn in two or more styles, held out in one of them (all its
  tones there) and kept for training in the others: can the model draw a known emoji in a
  known style it never saw them together?
- `heldout_composition` (b): an (identity, tones) pair held out in every style, where the
  identity stays in training with other tones (or none) and each of the tones stays in
  training on another identity: can the model put a known tone on a known emoji?
- `train`: everything else.

The three held-out groups take disjoint identities. Assignment is by hash, not by a random
stream: u(identity) = sha256("pictor-emoji-split:<seed>:<purpose>:<identity>") read as a
number in [0, 1). An identity's split therefore depends only on the seed and on itself (and, for
(a) and (b), on which styles and tones of it the import holds), not on the order of the sources
or on which other emoji they hold. Shares (SplitShares): 2% of identities for (c); 10% for
(a), among identities drawn in at least two styles; 15% for (b), among identities that have
toned drawings. A composition pick whose identity or one of whose tones would be left
without a training record goes back to training (`check` states the rules; tests hold them).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

SPLITS = ("train", "heldout_style", "heldout_composition", "heldout_unseen")
HELDOUT_SPLITS = SPLITS[1:]


@dataclass(frozen=True)
class SplitShares:
    unseen: float = 0.02  # of identities: unseen in every style (c)
    style: float = 0.10  # of identities in >= 2 styles: held out in one style (a)
    composition: float = 0.15  # of identities with toned drawings: one (identity, tones) (b)

    def __post_init__(self) -> None:
        if not all(0.0 <= v <= 1.0 for v in (self.unseen, self.style, self.composition)):
            raise ValueError(f"split shares are in [0, 1], got {self}")


@dataclass(frozen=True)
class Drawing:
    identity: str  # base code, upper case without FE0F ("1F44B")
    tones: tuple[str, ...]  # skin-tone modifiers of this drawing, () for none
    style: str  # style id (noto, twemoji, openmoji)


def unit_hash(seed: int, purpose: str, identity: str) -> float:
    """A number in [0, 1) fixed by (seed, purpose, identity) (see the module docstring)."""
    digest = hashlib.sha256(f"pictor-emoji-split:{seed}:{purpose}:{identity}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def _pick(options: Sequence, seed: int, purpose: str, identity: str):
    """One of `options` (sorted first), fixed by the hash."""
    ordered = sorted(options)
    return ordered[int(unit_hash(seed, purpose, identity) * len(ordered))]


def assign_splits(drawings: Sequence[Drawing], seed: int = 0,
                  shares: SplitShares = SplitShares()) -> list[str]:
    """The split of each drawing, in order (see the module docstring)."""
    styles: dict[str, set[str]] = defaultdict(set)
    toned: dict[str, set[tuple[str, ...]]] = defaultdict(set)
    for d in drawings:
        styles[d.identity].add(d.style)
        if d.tones:
            toned[d.identity].add(d.tones)
    unseen = {i for i in styles if unit_hash(seed, "unseen", i) < shares.unseen}
    held_style = {i: _pick(s, seed, "style-which", i) for i, s in styles.items()
                  if i not in unseen and len(s) >= 2
                  and unit_hash(seed, "style", i) < shares.style}
    held_pair = {i: _pick(t, seed, "tone-which", i) for i, t in toned.items()
                 if i not in unseen and i not in held_style
                 and unit_hash(seed, "composition", i) < shares.composition}

    def split_of(d: Drawing) -> str:
        if d.identity in unseen:
            return "heldout_unseen"
        if held_style.get(d.identity) == d.style:
            return "heldout_style"
        if held_pair.get(d.identity) == d.tones:
            return "heldout_composition"
        return "train"

    splits = [split_of(d) for d in drawings]
    # (b) needs the identity and each tone in training elsewhere; a pick without them goes back
    # to training, which only adds training records, so earlier checks stay true.
    for identity, tones in sorted(held_pair.items()):
        if not _composition_holds(drawings, splits, identity, tones):
            splits = ["train" if (d.identity, d.tones) == (identity, tones) else s
                      for d, s in zip(drawings, splits, strict=True)]
    return splits


def _composition_holds(drawings: Sequence[Drawing], splits: Sequence[str], identity: str,
                       tones: tuple[str, ...]) -> bool:
    trained = [d for d, s in zip(drawings, splits, strict=True) if s == "train"]
    if not any(d.identity == identity and d.tones != tones for d in trained):
        return False
    return all(any(t in d.tones and d.identity != identity for d in trained) for t in tones)


def check(drawings: Sequence[Drawing], splits: Sequence[str]) -> list[str]:
    """Violations of the split's promises (empty when it keeps them all)."""
    trained = [d for d, s in zip(drawings, splits, strict=True) if s == "train"]
    train_ids = {d.identity for d in trained}
    train_id_style = {(d.identity, d.style) for d in trained}
    train_pairs = {(d.identity, d.tones) for d in trained}
    problems = []
    for d, s in zip(drawings, splits, strict=True):
        if s == "heldout_unseen" and d.identity in train_ids:
            problems.append(f"{d}: unseen identity is trained on")
        elif s == "heldout_style":
            if (d.identity, d.style) in train_id_style:
                problems.append(f"{d}: held-out style is trained on for this identity")
            if not any(i == d.identity and st != d.style for i, st in train_id_style):
                problems.append(f"{d}: identity not trained on in another style")
        elif s == "heldout_composition":
            if (d.identity, d.tones) in train_pairs:
                problems.append(f"{d}: held-out (identity, tones) pair is trained on")
            if not _composition_holds(drawings, splits, d.identity, d.tones):
                problems.append(f"{d}: identity or tone missing from training elsewhere")
    return problems
