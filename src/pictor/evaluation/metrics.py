"""Distribution metrics on image features: Frechet distance, KID, precision/recall, diversity.

All functions take feature matrices (N, D) (rows are images; see pictor.evaluation.features)
and compute in float64. Notation:

| here            | paper                                   |
|-----------------|-----------------------------------------|
| mu_r, sigma_r   | m_w, C_w: mean, covariance of the real features (Heusel et al. 2017) |
| mu_g, sigma_g   | m, C: of the generated features         |
| k(x, y)         | polynomial kernel (x.y / d + 1)^3 (Binkowski et al. 2018) |
| NN_k(phi, Phi)  | k-th nearest neighbour of phi in Phi (Kynkaanniemi et al. 2019) |

These numbers depend on the feature network, the image resizing and above all the sample size
(FD is biased upwards for small N), so a figure means something only beside the same figure
between two real sets of the same size: the real-vs-real floor, which `pictor eval` always
reports next to it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

_DISTANCE_CHUNK = 1024  # rows per block of a pairwise-distance computation


def _as_features(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 2:
        raise ValueError(f"{name} must be an (N, D) feature matrix with N >= 2, got {x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} holds non-finite values")
    return x


def _check_pair(real: np.ndarray, generated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    real, generated = _as_features(real, "real"), _as_features(generated, "generated")
    if real.shape[1] != generated.shape[1]:
        raise ValueError(f"feature widths differ: real {real.shape[1]}, generated "
                         f"{generated.shape[1]}; use one extractor for both sets")
    return real, generated


# ---------------------------------------------------------------------------------------------
# Frechet distance
# ---------------------------------------------------------------------------------------------
def feature_statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean (D,), covariance (D, D)) of (N, D) features; unbiased covariance (N - 1)."""
    x = _as_features(features, "features")
    return x.mean(axis=0), np.cov(x, rowvar=False).reshape(x.shape[1], x.shape[1])


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix (eigendecomposition;
    eigenvalues below zero from round-off are clipped)."""
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu_1: np.ndarray, sigma_1: np.ndarray,
                     mu_2: np.ndarray, sigma_2: np.ndarray) -> float:
    """Squared Frechet (2-Wasserstein) distance between N(mu_1, sigma_1) and N(mu_2, sigma_2):

        d^2 = |mu_1 - mu_2|^2 + Tr(sigma_1 + sigma_2 - 2 (sigma_1 sigma_2)^(1/2))

    (Dowson & Landau 1982, "The Frechet distance between multivariate normal distributions";
    the FID of Heusel et al. 2017, "GANs trained by a two time-scale update rule ...", Sec. 3).
    Tr((sigma_1 sigma_2)^(1/2)) is taken as the sum of the square roots of the eigenvalues of the
    symmetric PSD matrix sigma_1^(1/2) sigma_2 sigma_1^(1/2), which is similar to sigma_1 sigma_2:
    no complex round-off as with scipy.linalg.sqrtm on the non-symmetric product.
    """
    mu_1, mu_2 = np.atleast_1d(np.asarray(mu_1, np.float64)), np.atleast_1d(np.asarray(mu_2,
                                                                                          np.float64))
    sigma_1, sigma_2 = np.atleast_2d(sigma_1).astype(np.float64), np.atleast_2d(sigma_2).astype(
        np.float64)
    d = mu_1.shape[0]
    if mu_2.shape != (d,) or sigma_1.shape != (d, d) or sigma_2.shape != (d, d):
        raise ValueError(f"shapes do not match: mu {mu_1.shape} {mu_2.shape}, sigma "
                         f"{sigma_1.shape} {sigma_2.shape}")
    root_1 = _psd_sqrt(sigma_1)
    middle = root_1 @ sigma_2 @ root_1  # (D, D), symmetric PSD
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2)
    trace_sqrt = float(np.sqrt(np.clip(eigenvalues, 0, None)).sum())
    diff = mu_1 - mu_2
    value = float(diff @ diff + np.trace(sigma_1) + np.trace(sigma_2) - 2 * trace_sqrt)
    return max(value, 0.0)


def frechet_distance_of_features(real: np.ndarray, generated: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two feature sets (the FID recipe)."""
    real, generated = _check_pair(real, generated)
    return frechet_distance(*feature_statistics(real), *feature_statistics(generated))


# ---------------------------------------------------------------------------------------------
# Kernel distance (KID)
# ---------------------------------------------------------------------------------------------
def polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """k(x, y) = (x.y / d + 1)^3 for all row pairs: (n, m)  (Binkowski et al. 2018, Sec. 3)."""
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased estimate of MMD^2 between the distributions of x (m, D) and y (n, D):

        1/(m(m-1)) sum_{i!=j} k(x_i, x_j) + 1/(n(n-1)) sum_{i!=j} k(y_i, y_j)
          - 2/(mn) sum_{i,j} k(x_i, y_j)

    (Gretton et al. 2012, "A Kernel Two-Sample Test", JMLR, Lemma 6). Its expectation is 0 when
    both sets come from one distribution, so it can come out negative.
    """
    m, n = x.shape[0], y.shape[0]
    k_xx, k_yy, k_xy = polynomial_kernel(x, x), polynomial_kernel(y, y), polynomial_kernel(x, y)
    return float((k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
                 + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
                 - 2 * k_xy.sum() / (m * n))


def kernel_inception_distance(real: np.ndarray, generated: np.ndarray, *, num_subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018, "Demystifying MMD GANs"): the unbiased MMD^2 with the cubic
    polynomial kernel, averaged over `num_subsets` random subsets of `min(subset_size, N)`
    images drawn without replacement from each set. Returns (mean, standard deviation over the
    subsets). With subsets as large as the sets, one subset is computed (the rest would repeat
    it), and the deviation is 0."""
    real, generated = _check_pair(real, generated)
    if num_subsets < 1 or subset_size < 2:
        raise ValueError(f"need num_subsets >= 1 and subset_size >= 2, got {num_subsets}, "
                         f"{subset_size}")
    size = min(subset_size, real.shape[0], generated.shape[0])
    if size == real.shape[0] == generated.shape[0]:
        return mmd2_unbiased(real, generated), 0.0
    rng = np.random.default_rng(seed)
    values = [mmd2_unbiased(real[rng.choice(real.shape[0], size, replace=False)],
                            generated[rng.choice(generated.shape[0], size, replace=False)])
              for _ in range(num_subsets)]
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------------------
# Precision and recall
# ---------------------------------------------------------------------------------------------
def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances between all rows of x (n, D) and y (m, D): (n, m)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    y_sq = (y * y).sum(axis=1)
    out = np.empty((x.shape[0], y.shape[0]))
    for start in range(0, x.shape[0], _DISTANCE_CHUNK):
        block = x[start:start + _DISTANCE_CHUNK]
        sq = (block * block).sum(axis=1)[:, None] + y_sq[None, :] - 2 * block @ y.T
        out[start:start + _DISTANCE_CHUNK] = np.sqrt(np.clip(sq, 0, None))
    return out


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """(N,) distance of each row to its k-th nearest other row of the same set."""
    if not 1 <= k < features.shape[0]:
        raise ValueError(f"k must lie in [1, N - 1] = [1, {features.shape[0] - 1}], got {k}")
    d = pairwise_distances(features, features)  # (N, N); the diagonal (self) sorts first
    return np.partition(d, k, axis=1)[:, k]


def manifold_coverage(manifold: np.ndarray, probes: np.ndarray, k: int) -> float:
    """Share of `probes` inside the k-NN manifold of `manifold`: probe phi counts when
    |phi - phi'| <= |phi' - NN_k(phi', manifold)| for some phi' of the manifold
    (Kynkaanniemi et al. 2019, "Improved Precision and Recall Metric for Assessing Generative
    Models", eq. 1 and 2)."""
    radii = knn_radii(manifold, k)  # (M,)
    inside = (pairwise_distances(probes, manifold) <= radii[None, :]).any(axis=1)  # (P,)
    return float(inside.mean())


def precision_recall(real: np.ndarray, generated: np.ndarray, k: int = 3) -> tuple[float, float]:
    """(precision, recall): precision = share of generated images inside the real manifold
    (quality), recall = share of real images inside the generated manifold (coverage). k = 3
    as in the paper."""
    real, generated = _check_pair(real, generated)
    return manifold_coverage(real, generated, k), manifold_coverage(generated, real, k)


# ---------------------------------------------------------------------------------------------
# Diversity
# ---------------------------------------------------------------------------------------------
def mean_pairwise_distance(features: np.ndarray) -> float:
    """Mean Euclidean distance over the N(N-1)/2 distinct pairs of rows (N >= 2). Images of one
    prompt that collapse to one mode give ~0."""
    x = _as_features(features, "features")
    d = pairwise_distances(x, x)
    n = x.shape[0]
    return float(d[np.triu_indices(n, 1)].mean())


# ---------------------------------------------------------------------------------------------
# All of them
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DistributionMetrics:
    """The distribution metrics of one (real, generated) pair of equal-size feature sets."""

    frechet_distance: float  # on Gaussian fits of the two sets; 0 for identical statistics
    kid: float  # mean unbiased MMD^2 over subsets (polynomial kernel); ~0 for one distribution
    kid_std: float  # its standard deviation over the subsets (of min(1000, N / 2) images)
    precision: float  # share of generated images on the real manifold (k-NN, k = `k`)
    recall: float  # share of real images on the generated manifold
    num_images: int  # images per set
    k: int  # neighbourhood size of precision/recall

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def distribution_metrics(real: np.ndarray, generated: np.ndarray, *, k: int = 3,
                         kid_subsets: int = 100, kid_subset_size: int = 1000,
                         seed: int = 0) -> DistributionMetrics:
    """FD, KID and precision/recall of two feature sets of equal size (ValueError otherwise:
    every one of these numbers moves with the sample size, so unequal sets mislead)."""
    real, generated = _check_pair(real, generated)
    if real.shape[0] != generated.shape[0]:
        raise ValueError(f"real and generated sets must have equal sizes, got {real.shape[0]} "
                         f"and {generated.shape[0]}")
    # Subsets of at most half the set, so that they differ and their spread means something.
    subset_size = min(kid_subset_size, max(2, real.shape[0] // 2))
    kid, kid_std = kernel_inception_distance(real, generated, num_subsets=kid_subsets,
                                             subset_size=subset_size, seed=seed)
    precision, recall = precision_recall(real, generated, k)
    return DistributionMetrics(frechet_distance=frechet_distance_of_features(real, generated),
                               kid=kid, kid_std=kid_std, precision=precision, recall=recall,
                               num_images=real.shape[0], k=k)
