"""The held-out split of the emoji data set (pictor.data.emoji_split) at the real data's scale:
its promises, its shares, and that it depends on the seed and each emoji alone."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from pictor.data.emoji_split import Drawing, SplitShares, assign_splits, check

TONES = ("1F3FB", "1F3FC", "1F3FD", "1F3FE", "1F3FF")
STYLES = ("noto", "twemoji", "openmoji")


def world(num_identities: int = 2000, toned_every: int = 5) -> list[Drawing]:
    """Emoji like the real packages': every 5th has five tones; every 7th is OpenMoji's only."""
    drawings = []
    for i in range(num_identities):
        identity = f"{0x1F000 + i:X}"
        styles = ("openmoji",) if i % 7 == 0 else STYLES
        tones = [()] + ([(t,) for t in TONES] if i % toned_every == 0 else [])
        drawings += [Drawing(identity, t, s) for s in styles for t in tones]
    return drawings


def test_promises_hold_at_scale():
    drawings = world()
    splits = assign_splits(drawings, seed=0)
    assert check(drawings, splits) == []
    counts = Counter(splits)
    assert set(counts) == {"train", "heldout_style", "heldout_composition", "heldout_unseen"}


def test_shares_are_the_documented_ones():
    drawings = world()
    splits = assign_splits(drawings, seed=0)
    ids = lambda split: {d.identity for d, s in zip(drawings, splits, strict=False) if s == split}  # noqa: E731
    multi_style = len({d.identity for d in drawings if d.style != "openmoji"})
    toned = len({d.identity for d in drawings if d.tones})
    assert 0.01 <= len(ids("heldout_unseen")) / 2000 <= 0.03
    assert 0.07 <= len(ids("heldout_style")) / multi_style <= 0.13
    assert 0.10 <= len(ids("heldout_composition")) / toned <= 0.20
    # a style hold-out takes one style of the emoji, every tone of it there
    for identity in ids("heldout_style"):
        held = {d.style for d, s in zip(drawings, splits, strict=False) if d.identity == identity
                and s == "heldout_style"}
        assert len(held) == 1


def test_split_depends_on_the_seed_and_the_emoji_only():
    drawings = world(600)
    splits = dict(zip(drawings, assign_splits(drawings, seed=3), strict=False))
    shuffled = drawings[:]
    random.Random(0).shuffle(shuffled)
    assert dict(zip(shuffled, assign_splits(shuffled, seed=3), strict=False)) == splits
    # another collection around the same emoji leaves their splits alone
    more = drawings + [Drawing(f"E{i:03X}", (), "openmoji") for i in range(100)]
    again = dict(zip(more, assign_splits(more, seed=3), strict=False))
    assert all(again[d] == s for d, s in splits.items())
    other = dict(zip(drawings, assign_splits(drawings, seed=4), strict=False))
    assert other != splits


def test_a_composition_pick_without_its_tone_elsewhere_stays_in_training():
    """One toned emoji alone: its tone is on no other emoji, so nothing can be held out."""
    drawings = [Drawing("1F44D", t, s) for s in STYLES for t in [(), ("1F3FF",)]]
    splits = assign_splits(drawings, shares=SplitShares(unseen=0, style=0, composition=1))
    assert splits == ["train"] * len(drawings)
    # with the tone on a second emoji, one of the two pairs is held out
    drawings += [Drawing("1F44B", t, s) for s in STYLES for t in [(), ("1F3FF",)]]
    splits = assign_splits(drawings, shares=SplitShares(unseen=0, style=0, composition=1))
    assert splits.count("heldout_composition") == 3 and check(drawings, splits) == []


def test_shares_outside_zero_one_are_refused():
    with pytest.raises(ValueError, match="split shares"):
        SplitShares(unseen=1.5)
