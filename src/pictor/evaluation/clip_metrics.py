"""Alignment, distribution and memorisation figures of the in-domain CLIP judge.

Every function takes embeddings as (N, E) arrays (rows are images or captions; they are
L2-normalised here, so raw tower outputs work too) and computes in float64:

| figure | definition | source |
|---|---|---|
| CLIPScore | 100 * mean_i max(cos(I_i, T_i), 0) over (image, caption) pairs | Hessel et al. 2021, eq. 1 with w = 1, x100 (torchmetrics' scaling) |
| R-precision | share of images whose caption scores strictly above all of 99 others drawn at random from the set's other distinct captions (R = 1) | Xu et al. 2018 (AttnGAN, Sec. 5); Tao et al. 2022 (DF-GAN) |
| hard-negative accuracy | share of images whose caption scores strictly above every hard negative (the same emoji in the other styles, or in its other skin tones) | issue 25 |
| FD, KID | Frechet distance and KID on the standardised CLIP image features | pictor.evaluation.metrics |
| memorisation | share of images whose nearest training image in CLIP space is a near-copy: cosine >= 0.95 AND pixel RMS difference <= 0.05 (on [0, 1]) | issue 25 |

A tie counts as a loss: a judge that maps every caption to one vector scores 0, never chance.
Each figure of generated images means something only beside the same figure of real held-out
images of the same captions (the ceiling a generator can reach with this judge) and, for FD and
KID, beside the real-vs-real floor; `evaluate_clip_sets` reports them side by side.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from pictor.evaluation.metrics import frechet_distance_of_features, kernel_inception_distance

NUM_CANDIDATES = 100  # R-precision: the true caption among 99 others (AttnGAN)
NEAR_COPY_COSINE = 0.95  # memorisation: CLIP-space cosine to the nearest training image...
NEAR_COPY_PIXEL_RMS = 0.05  # ...and pixel RMS difference to it (images on [0, 1]), both


def _unit(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name} must be an (N, E) array, got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


@dataclass(frozen=True)
class RankAccuracy:
    """A share of images whose true caption outscored its candidates."""

    value: float  # the share (0..1)
    num_images: int  # images it is measured on
    chance: float  # the expected share of a judge that ranks at random

    def interval(self) -> tuple[float, float]:
        """95% Wilson score interval of the share (the benchmark's pass rates use the same)."""
        from pictor.evaluation.benchmark import wilson_interval

        return wilson_interval(round(self.value * self.num_images), self.num_images)

    def to_dict(self) -> dict[str, float | int | list[float]]:
        return asdict(self) | {"interval_95": list(self.interval())}


# ---------------------------------------------------------------------------------------------
# Alignment
# ---------------------------------------------------------------------------------------------
def clip_score(image_emb: np.ndarray, text_emb: np.ndarray) -> float:
    """CLIPScore of paired rows: 100 * mean_i max(cos(image_i, text_i), 0)."""
    images, texts = _unit(image_emb, "image_emb"), _unit(text_emb, "text_emb")
    if images.shape != texts.shape or len(images) == 0:
        raise ValueError(f"need paired, non-empty rows, got {images.shape} and {texts.shape}")
    return float(100 * np.maximum((images * texts).sum(1), 0).mean())


def distinct(captions: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(the distinct captions in first-seen order, (N,) index of each caption among them)."""
    position: dict[str, int] = {}
    index = np.array([position.setdefault(c, len(position)) for c in captions], dtype=np.int64)
    return list(position), index


def r_precision(image_emb: np.ndarray, caption_index: np.ndarray, caption_emb: np.ndarray, *,
                num_candidates: int = NUM_CANDIDATES, seed: int = 0) -> RankAccuracy:
    """R-precision (R = 1). caption_emb (U, E) holds U distinct captions; image i's caption is
    row caption_index[i]. Each image meets its caption and num_candidates - 1 other rows drawn
    at random (seeded, per image); fewer when U is smaller (chance is then 1 / U)."""
    images, texts = _unit(image_emb, "image_emb"), _unit(caption_emb, "caption_emb")
    caption_index = np.asarray(caption_index, dtype=np.int64)
    if caption_index.shape != (len(images),) or (len(images) and not (
            0 <= caption_index.min() and caption_index.max() < len(texts))):
        raise ValueError(f"caption_index must hold one row of caption_emb ({len(texts)} rows) "
                         f"per image ({len(images)})")
    num_others = min(num_candidates - 1, len(texts) - 1)
    if num_others < 1 or len(images) == 0:
        raise ValueError("R-precision needs images and at least two distinct captions")
    rng = np.random.default_rng(seed)
    wins = np.empty(len(images), bool)
    for i, true in enumerate(caption_index):
        others = rng.choice(len(texts) - 1, num_others, replace=False)
        others += others >= true                               # skip the true caption's row
        scores = texts[np.concatenate([[true], others])] @ images[i]   # (1 + num_others,)
        wins[i] = scores[0] > scores[1:].max()
    return RankAccuracy(float(wins.mean()), len(images), 1 / (1 + num_others))


def hard_negative_accuracy(image_emb: np.ndarray, true_emb: np.ndarray,
                           negative_embs: Sequence[np.ndarray]) -> RankAccuracy | None:
    """Share of images whose true caption (true_emb[i]) scores strictly above every one of its
    hard negatives (negative_embs[i], (k_i, E)); images without negatives (k_i = 0) are left
    out. None when no image has any. Chance: the mean of 1 / (1 + k_i)."""
    images, truth = _unit(image_emb, "image_emb"), _unit(true_emb, "true_emb")
    if len(images) != len(truth) or len(negative_embs) != len(images):
        raise ValueError("need one true caption and one list of negatives per image")
    wins, chance = [], []
    for i, negatives in enumerate(negative_embs):
        if len(negatives) == 0:
            continue
        negatives = _unit(np.asarray(negatives).reshape(len(negatives), -1), "negatives")
        wins.append(images[i] @ truth[i] > (negatives @ images[i]).max())
        chance.append(1 / (1 + len(negatives)))
    if not wins:
        return None
    return RankAccuracy(float(np.mean(wins)), len(wins), float(np.mean(chance)))


# ---------------------------------------------------------------------------------------------
# Distribution (FD, KID) beside the real-vs-real floor
# ---------------------------------------------------------------------------------------------
def split_halves(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A seeded split of range(n) into two halves (sorted index arrays, sizes n // 2)."""
    perm = np.random.default_rng(seed).permutation(n)
    half = n // 2
    return np.sort(perm[:half]), np.sort(perm[half:2 * half])


def fd_kid(query: np.ndarray, reference: np.ndarray, seed: int = 0) -> dict[str, float]:
    """FD and KID (mean, std over subsets of half the set) between two equal-size sets."""
    kid, kid_std = kernel_inception_distance(
        query, reference, subset_size=max(2, min(1000, len(query) // 2)), seed=seed)
    return {"fd": frechet_distance_of_features(query, reference), "kid": kid, "kid_std": kid_std}


# ---------------------------------------------------------------------------------------------
# Memorisation
# ---------------------------------------------------------------------------------------------
def nearest_neighbours(query_emb: np.ndarray, train_emb: np.ndarray,
                       chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """(index (N,), cosine (N,)) of each query row's nearest training row by cosine."""
    query, train = _unit(query_emb, "query_emb"), _unit(train_emb, "train_emb")
    index, cosine = np.empty(len(query), np.int64), np.empty(len(query))
    for start in range(0, len(query), chunk):
        sims = query[start:start + chunk] @ train.T                       # (c, M)
        index[start:start + chunk] = sims.argmax(1)
        cosine[start:start + chunk] = sims.max(1)
    return index, cosine


def memorisation(query_emb: np.ndarray, query_pixels: np.ndarray, train_emb: np.ndarray,
                 train_pixels: np.ndarray, *, cosine_threshold: float = NEAR_COPY_COSINE,
                 pixel_rms_threshold: float = NEAR_COPY_PIXEL_RMS) -> dict[str, float | int]:
    """Near-copies of training images (module docstring). query_pixels (N, 3, H, W) and
    train_pixels (M, 3, H, W) uint8 at one size. Returns the share that is a near-copy (both
    tests), the shares passing each test alone, and the median cosine to the nearest image."""
    if query_pixels.shape[1:] != train_pixels.shape[1:]:
        raise ValueError(f"pixel arrays differ in shape: {query_pixels.shape[1:]} and "
                         f"{train_pixels.shape[1:]}")
    index, cosine = nearest_neighbours(query_emb, train_emb)
    diff = (query_pixels.astype(np.float64) - train_pixels[index].astype(np.float64)) / 255.0
    rms = np.sqrt((diff.reshape(len(diff), -1) ** 2).mean(1))             # (N,)
    close, same = cosine >= cosine_threshold, rms <= pixel_rms_threshold
    return {"near_copy_share": float((close & same).mean()),
            "cosine_share": float(close.mean()), "pixel_share": float(same.mean()),
            "median_nearest_cosine": float(np.median(cosine)), "num_images": len(cosine),
            "cosine_threshold": cosine_threshold, "pixel_rms_threshold": pixel_rms_threshold}
