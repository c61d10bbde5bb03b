"""Distribution metrics against closed forms and brute-force definitions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import linalg

from pictor.evaluation.metrics import (
    distribution_metrics,
    feature_statistics,
    frechet_distance,
    frechet_distance_of_features,
    kernel_inception_distance,
    knn_radii,
    mean_pairwise_distance,
    mmd2_unbiased,
    precision_recall,
)


def random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_frechet_distance_of_identical_gaussians_is_zero():
    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=8), random_covariance(rng, 8)
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0.0, abs=1e-9)


def test_frechet_distance_closed_forms():
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2 with standard deviations s.
    assert frechet_distance([1.0], [[4.0]], [3.0], [[9.0]]) == pytest.approx(4.0 + 1.0)
    # Commuting (diagonal) covariances: |dmu|^2 + sum (sqrt(a_i) - sqrt(b_i))^2.
    a, b = np.array([1.0, 4.0, 0.25]), np.array([9.0, 1.0, 0.25])
    mu_1, mu_2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 1.0, 0.0])
    expected = 1 + 4 + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert frechet_distance(mu_1, np.diag(a), mu_2, np.diag(b)) == pytest.approx(expected)


def test_frechet_distance_matches_the_sqrtm_formula_for_general_covariances():
    rng = np.random.default_rng(1)
    for d in (2, 5, 16):
        s1, s2 = random_covariance(rng, d), random_covariance(rng, d)
        m1, m2 = rng.normal(size=d), rng.normal(size=d)
        covmean = linalg.sqrtm(s1 @ s2).real
        expected = ((m1 - m2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(expected, rel=1e-8)
        assert frechet_distance(m1, s1, m2, s2) == pytest.approx(frechet_distance(m2, s2, m1, s1))


def test_frechet_distance_of_samples_approaches_the_population_value():
    rng = np.random.default_rng(2)
    s1, s2 = random_covariance(rng, 3), random_covariance(rng, 3)
    m1, m2 = np.zeros(3), np.array([1.0, 0.0, -1.0])
    x = rng.multivariate_normal(m1, s1, size=40_000)
    y = rng.multivariate_normal(m2, s2, size=40_000)
    mu, sigma = feature_statistics(x)
    assert np.allclose(mu, x.mean(0)) and np.allclose(sigma, np.cov(x.T))
    assert frechet_distance_of_features(x, y) == pytest.approx(frechet_distance(m1, s1, m2, s2),
                                                               rel=0.03)


def test_mmd_unbiased_matches_its_definition():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 4)), rng.normal(1.0, 1.0, size=(5, 4))

    def k(a, b):
        return (a @ b / 4 + 1) ** 3

    xx = sum(k(x[i], x[j]) for i, j in itertools.permutations(range(6), 2)) / (6 * 5)
    yy = sum(k(y[i], y[j]) for i, j in itertools.permutations(range(5), 2)) / (5 * 4)
    xy = sum(k(a, b) for a in x for b in y) / (6 * 5)
    assert mmd2_unbiased(x, y) == pytest.approx(xx + yy - 2 * xy)


def test_kid_is_about_zero_for_one_distribution_and_positive_for_two():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    same, same_std = kernel_inception_distance(x, y, num_subsets=50, subset_size=200)
    shifted, _ = kernel_inception_distance(x, y + 0.5, num_subsets=50, subset_size=200)
    assert abs(same) < 3 * same_std / np.sqrt(50) + 1e-3
    assert shifted > 20 * abs(same) and shifted > 0
    # Subsets as large as the sets: one exact value, no spread.
    full, spread = kernel_inception_distance(x, y, subset_size=1000)
    assert full == pytest.approx(mmd2_unbiased(x, y)) and spread == 0.0


def test_precision_recall_of_identical_and_disjoint_sets():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(200, 8))
    assert precision_recall(x, x.copy()) == (1.0, 1.0)
    assert precision_recall(x, x + 100.0) == (0.0, 0.0)


def test_precision_recall_detect_missing_modes():
    """Generated images on half the real modes: precision stays high, recall drops to ~1/2."""
    rng = np.random.default_rng(6)
    centres = np.array([[0.0, 0.0], [20.0, 0.0], [0.0, 20.0], [20.0, 20.0]])
    real = np.concatenate([c + rng.normal(size=(250, 2)) for c in centres])
    generated = np.concatenate([c + rng.normal(size=(500, 2)) for c in centres[:2]])
    precision, recall = precision_recall(real, generated)
    assert precision > 0.95 and 0.4 < recall < 0.6


def test_knn_radii_and_mean_pairwise_distance_closed_forms():
    points = np.array([[0.0], [1.0], [3.0]])
    assert np.allclose(knn_radii(points, 1), [1.0, 1.0, 2.0])
    assert np.allclose(knn_radii(points, 2), [3.0, 2.0, 3.0])
    assert mean_pairwise_distance(points) == pytest.approx((1 + 3 + 2) / 3)
    assert mean_pairwise_distance(np.ones((4, 3))) == 0.0


def test_distribution_metrics_need_equal_sizes_and_valid_input():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(50, 4))
    result = distribution_metrics(x, x.copy())
    assert result.frechet_distance == pytest.approx(0.0, abs=1e-9)
    assert (result.precision, result.recall, result.num_images) == (1.0, 1.0, 50)
    with pytest.raises(ValueError, match="equal sizes"):
        distribution_metrics(x, x[:40])
    with pytest.raises(ValueError, match="widths"):
        distribution_metrics(x, x[:, :3])
    with pytest.raises(ValueError, match="non-finite"):
        distribution_metrics(x, np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="k must"):
        precision_recall(x[:3], x[:3], k=3)
