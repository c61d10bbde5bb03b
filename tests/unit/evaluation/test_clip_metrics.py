"""The CLIP judge's figures on hand-made embeddings whose answers are known: CLIPScore's formula,
R-precision and hard-negative accuracy with planted winners and losers, memorisation of planted
copies, and the emoji hard negatives built from records."""

from __future__ import annotations

import numpy as np
import pytest

from pictor.evaluation.clip_eval import emoji_hard_negatives
from pictor.evaluation.clip_metrics import (
    clip_score,
    distinct,
    fd_kid,
    hard_negative_accuracy,
    memorisation,
    nearest_neighbours,
    r_precision,
    split_halves,
)


def unit(x):
    x = np.asarray(x, float)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def test_clip_score_is_100_times_the_mean_clipped_cosine():
    images = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 0.0]])
    texts = np.array([[3.0, 4.0], [0.0, -1.0], [1.0, 0.0]])  # cosines 0.6, -1 (clipped), 1
    assert clip_score(images, texts) == pytest.approx(100 * (0.6 + 0.0 + 1.0) / 3)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 8)), rng.normal(size=(50, 8))
    cos = (unit(a) * unit(b)).sum(1)
    assert clip_score(a, b) == pytest.approx(100 * np.maximum(cos, 0).mean())
    with pytest.raises(ValueError, match="paired"):
        clip_score(a, b[:-1])


def test_r_precision_counts_planted_winners_and_losers():
    # 200 distinct captions as random directions; image i looks like caption i for even i and
    # like the opposite of its caption for odd i: even images always win, odd ones never.
    rng = np.random.default_rng(1)
    captions = unit(rng.normal(size=(200, 32)))
    index = np.arange(200)
    images = np.where((index % 2 == 0)[:, None], captions, -captions)
    result = r_precision(images, index, captions, seed=3)
    assert result.value == 0.5 and result.num_images == 200
    assert result.chance == pytest.approx(1 / 100)
    # its 95% Wilson interval, written out: p = 0.5, n = 200, z = 1.96
    z, n = 1.959964, 200
    centre, half = (0.5 + z * z / (2 * n)), z * (0.25 / n + z * z / (4 * n * n)) ** 0.5
    low, high = result.to_dict()["interval_95"]
    assert low == pytest.approx((centre - half) / (1 + z * z / n))
    assert high == pytest.approx((centre + half) / (1 + z * z / n))
    assert 0.43 < low < 0.5 < high < 0.57
    # a small set: the candidates are all the other captions, chance 1 / U
    small = r_precision(captions[:5], np.arange(5), captions[:5])
    assert small.value == 1.0 and small.chance == pytest.approx(1 / 5)


def test_r_precision_counts_a_tie_as_a_loss_and_checks_its_input():
    texts = unit(np.eye(3))
    collapsed = np.ones((3, 3))  # equal cosine with every caption: no image wins
    assert r_precision(collapsed, np.arange(3), texts).value == 0.0
    with pytest.raises(ValueError, match="two distinct captions"):
        r_precision(texts[:1], np.array([0]), texts[:1])
    with pytest.raises(ValueError, match="caption_index"):
        r_precision(texts, np.array([0, 1, 3]), texts)


def test_r_precision_draws_99_others_per_image():
    # Every image is the same: its true caption is row 0, two "rival" captions score above it
    # and all others below. An image wins iff no rival is among its 99 draws, which happens
    # with probability C(U-1-r, 99) / C(U-1, 99); over 4,000 images the share must match it.
    rng = np.random.default_rng(2)
    num_captions, rivals = 150, 2
    texts = unit(rng.normal(size=(num_captions, 512)))
    image = texts[0] + 2.0 * texts[1:1 + rivals].sum(0)  # rivals score above the truth
    image_emb = np.repeat(image[None], 4000, axis=0)
    assert (texts[1:1 + rivals] @ unit(image)).min() > unit(image) @ texts[0]
    assert (np.delete(texts, range(1 + rivals), 0) @ unit(image)).max() < unit(image) @ texts[0]
    result = r_precision(image_emb, np.zeros(4000, int), texts, seed=0)
    others = num_captions - 1
    p_win = np.prod([(others - rivals - k) / (others - k) for k in range(99)])
    assert result.value == pytest.approx(p_win, abs=0.03)


def test_hard_negative_accuracy_with_known_answers():
    images = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    truth = unit([[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    negatives = [unit([[0.9, 0.1, 0], [0, 1, 0]]),   # the truth wins over both
                 unit([[0, 1, 0.01]]),               # a near-copy of the truth, cosine below 1
                 np.zeros((0, 3))]                   # no negatives: left out
    result = hard_negative_accuracy(images, truth, negatives)
    assert result.value == 1.0 and result.num_images == 2
    assert result.chance == pytest.approx((1 / 3 + 1 / 2) / 2)
    swapped = [unit([[0, 0, 1], [1, 0.2, 0]]), unit([[0.2, 1, 0]])]
    result = hard_negative_accuracy(images[:2], unit([[0, 0, 1], [0, 1, 0]]), swapped)
    # image 0's "truth" is orthogonal to it and a negative is close: loss; image 1 wins
    assert result.value == 0.5
    assert hard_negative_accuracy(images, truth, [[], [], []]) is None


def test_distinct_keeps_first_seen_order():
    unique, index = distinct(["b", "a", "b", "c", "a"])
    assert unique == ["b", "a", "c"] and index.tolist() == [0, 1, 0, 2, 1]


def test_memorisation_finds_planted_copies_and_only_them():
    rng = np.random.default_rng(4)
    train_pixels = rng.integers(0, 256, size=(20, 3, 8, 8), dtype=np.uint8)
    train_emb = rng.normal(size=(20, 16))
    # 3 exact copies of training images, 1 copy with +-4 levels of noise (RMS ~0.016: a
    # near-copy), 2 unrelated images
    noisy = np.clip(train_pixels[7].astype(int) + rng.choice([-4, 4], size=(3, 8, 8)), 0, 255)
    query_pixels = np.stack([train_pixels[2], train_pixels[5], train_pixels[9], noisy,
                             rng.integers(0, 256, size=(3, 8, 8)),
                             rng.integers(0, 256, size=(3, 8, 8))]).astype(np.uint8)
    query_emb = np.concatenate([train_emb[[2, 5, 9, 7]] + 0.01 * rng.normal(size=(4, 16)),
                                rng.normal(size=(2, 16))])
    index, cosine = nearest_neighbours(query_emb, train_emb)
    assert index[:4].tolist() == [2, 5, 9, 7] and (cosine[:4] > 0.99).all()
    result = memorisation(query_emb, query_pixels, train_emb, train_pixels)
    assert result["near_copy_share"] == pytest.approx(4 / 6)
    assert result["pixel_share"] == pytest.approx(4 / 6) and result["num_images"] == 6
    # the same pixels with unrelated embeddings are not near-copies (both tests must pass)
    unrelated = memorisation(rng.normal(size=(6, 16)) * 5, query_pixels, train_emb, train_pixels)
    assert unrelated["near_copy_share"] <= unrelated["cosine_share"] < 1


def test_fd_kid_is_zero_for_one_set_and_grows_with_a_shift():
    rng = np.random.default_rng(5)
    a = rng.normal(size=(200, 4))
    same = fd_kid(a, a)
    assert same["fd"] == pytest.approx(0, abs=1e-9) and abs(same["kid"]) < 0.1
    shifted = fd_kid(a, a + 3.0)
    assert shifted["fd"] == pytest.approx(4 * 9.0, rel=1e-6)  # |mu shift|^2, same covariance
    first, second = split_halves(11, seed=0)
    assert len(first) == len(second) == 5 and not set(first) & set(second)


def test_emoji_hard_negatives_name_the_other_styles_and_tones():
    def record(code, name, style):
        return {"emoji": "1F44D", "code": code, "name": name, "style": style}

    pool = [("thumbs up, Twemoji style", record("1F44D", "thumbs up", "twemoji")),
            ("thumbs up: dark skin tone, Twemoji style",
             record("1F44D-1F3FF", "thumbs up: dark skin tone", "twemoji")),
            ("thumbs up: light skin tone, Twemoji style",
             record("1F44D-1F3FB", "thumbs up: light skin tone", "twemoji")),
            ("thumbs up: light skin tone, OpenMoji style",
             record("1F44D-1F3FB", "thumbs up: light skin tone", "openmoji"))]
    caption, extra = pool[1]
    negatives = emoji_hard_negatives([caption, "a red circle"], [extra, {"category": "x"}], pool)
    assert sorted(negatives["style"][0]) == ["thumbs up: dark skin tone, Noto Emoji style",
                                             "thumbs up: dark skin tone, OpenMoji style"]
    assert negatives["tone"][0] == ["thumbs up, Twemoji style",
                                    "thumbs up: light skin tone, Twemoji style"]
    assert negatives["all"][0] == negatives["style"][0] + negatives["tone"][0]
    assert negatives["style"][1] == negatives["tone"][1] == negatives["all"][1] == []
