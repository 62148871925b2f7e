"""Transferability scores of a backbone from its pooled features (NumPy, SciPy and scikit-learn only).

Every score takes the features of the labelled train split, shape ``(n_samples, n_features)``, and
its labels, shape ``(n_samples,)`` (class indices); higher is better for all of them:

* :func:`logme`: the log marginal evidence of a Bayesian linear model per class (You et al., 2021);
* :func:`h_score`: the shrinkage-regularised H-score (Bao et al., 2019, with the Ledoit-Wolf
  covariance of Ibrahim et al., 2022);
* :func:`knn_accuracy`: the leave-one-out accuracy of a k-nearest-neighbour vote (cosine distance);
* :func:`linear_probe_accuracy`: the cross-validated accuracy of a logistic regression.

None of them reads the val split: it is what the search selects on.

:func:`score_features` computes all of them; :data:`SCORES` names them as ``SearchSettings``
accepts them.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import NDArray
from scipy import linalg
from sklearn.covariance import LedoitWolf
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.neighbors import NearestNeighbors
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler, normalize

from autotransfer.errors import DataError, describe
from autotransfer.settings import SCREEN_SCORES

__all__ = ["KNN_NEIGHBORS", "LINEAR_PROBE_FOLDS", "METHODS", "SCORES", "h_score", "knn_accuracy",
           "linear_probe_accuracy", "logme", "score_features"]

SCORES = SCREEN_SCORES  # ("knn", "logme", "h_score", "linear_probe"), the default first; validated by SearchSettings
KNN_NEIGHBORS = 5  # scikit-learn's KNeighborsClassifier default
LINEAR_PROBE_FOLDS = 5
# How each score was computed, stored with every screen so that a report states the method its numbers came from
METHODS = {
    "knn": f"leave-one-out accuracy on train of a {KNN_NEIGHBORS}-nearest-neighbour vote, cosine distance",
    "logme": "LogME, the log evidence per train image of a Bayesian linear model (You et al., ICML 2021)",
    "h_score": "H-score with Ledoit-Wolf shrinkage on train (Bao et al., ICIP 2019; Ibrahim et al., 2022)",
    "linear_probe": f"{LINEAR_PROBE_FOLDS}-fold cross-validated accuracy on train of an L2 logistic regression "
                    "(L-BFGS, C = 1, standardised features)",
}
_LOGME_MAX_ITER = 100  # each costs O(n_classes min(n_samples, n_features)); an interior optimum takes tens
_LOGME_TOL = 1e-8  # change of every class's evidence per sample (nats) that ends the fixed-point iteration


def _check(features: NDArray[np.floating], labels: NDArray[np.integer]) -> tuple[NDArray[np.float64],
                                                                                 NDArray[np.int64]]:
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(np.int64)
    if f.ndim != 2 or y.ndim != 1 or len(f) != len(y):
        raise DataError(describe("features", "an array (n_samples, n_features) with one label per row",
                                 f"features {f.shape}, labels {y.shape}"))
    if not np.isfinite(f).all():
        raise DataError(describe("features", "finite", "an array holding NaN or inf"))
    if len(np.unique(y)) < 2:
        raise DataError(describe("labels", "at least two classes", np.unique(y).tolist()))
    return f, y


def logme(features: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    """LogME: the mean log evidence per sample of a Bayesian linear regression onto each one-hot label.

    For each class ``k`` the model is ``y_k = F w + noise`` with prior ``w ~ N(0, 1/alpha)`` and noise
    ``N(0, 1/beta)``; ``alpha`` and ``beta`` are set by MacKay's fixed-point iteration, all classes at
    once, until no class's evidence per sample moves by 1e-8 nats in an iteration, or for at most 100
    iterations (where the features can fit a target exactly, more features than samples, the evidence
    creeps up for ever as ``beta`` grows). The log evidence ``log p(y_k | F, alpha, beta)`` is averaged
    over classes and divided by ``n_samples``.
    Computed from the thin SVD of ``F``, so it costs ``O(n d min(n, d))`` whichever is larger.

    Hand-written: no maintained package provides it (the authors' reference code, thuml/LogME, is a
    script, not a package). Source: K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of
    Pre-trained Models for Transfer Learning", ICML 2021, Algorithm 2.

    Args:
        features: Shape ``(n_samples, n_features)``, pooled features as the backbone gives them.
        labels: Shape ``(n_samples,)``, class indices.

    Returns:
        The evidence per sample (nats; higher is better; typically between -2 and 2).

    Raises:
        DataError: Shapes disagree, a value is not finite, or fewer than two classes.
    """
    f, y = _check(features, labels)
    n, d = f.shape
    u, sigma, _ = linalg.svd(f, full_matrices=False)
    s = sigma[:, None] ** 2  # (rank, 1): eigenvalues of F^T F (the other d - rank are 0)
    targets = (y[:, None] == np.unique(y)[None, :]).astype(np.float64)  # (n, K) one-hot, every class at once
    z = u.T @ targets  # (rank, K): the targets in the left singular basis
    outside = np.sum(targets**2, axis=0) - np.sum(z**2, axis=0)  # (K,): the part outside F's column space
    alpha, beta = np.ones(z.shape[1]), np.ones(z.shape[1])
    previous = None
    for _ in range(_LOGME_MAX_ITER + 1):  # the start, then after each of at most _LOGME_MAX_ITER updates
        gamma, m_sq, residual, evidence = _posterior(alpha, beta, s, sigma[:, None], z, outside, n, d)
        if previous is not None and np.max(np.abs(evidence - previous)) < _LOGME_TOL * n:
            break
        previous = evidence
        alpha, beta = gamma / np.maximum(m_sq, 1e-12), (n - gamma) / np.maximum(residual, 1e-12)  # MacKay's update
    return float(np.mean(evidence / n))


def _posterior(alpha: NDArray[np.float64], beta: NDArray[np.float64], s: NDArray[np.float64],
               sigma: NDArray[np.float64], z: NDArray[np.float64], outside: NDArray[np.float64], n: int,
               d: int) -> tuple[NDArray[np.float64], ...]:
    """At ``(alpha_k, beta_k)`` for every class ``k``, each of shape ``(K,)``: the effective number of
    parameters ``gamma``, ``|m|^2`` (m the posterior mean of w), the residual ``|y - F m|^2`` and the
    log evidence ``log p(y_k | F, alpha_k, beta_k)`` (You et al., 2021, Algorithm 2 and eq. 2)."""
    denom = alpha + beta * s  # (rank, K)
    gamma = np.sum(beta * s / denom, axis=0)
    m_sq = np.sum((beta * sigma * z / denom) ** 2, axis=0)
    residual = np.sum((alpha * z / denom) ** 2, axis=0) + outside
    log_det = np.sum(np.log(denom), axis=0) + (d - len(s)) * np.log(alpha)  # log |alpha I + beta F^T F|
    evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - beta / 2 * residual
                - alpha / 2 * m_sq - n / 2 * np.log(2 * np.pi))
    return gamma, m_sq, residual, np.asarray(evidence)


def h_score(features: NDArray[np.floating], labels: NDArray[np.integer]) -> float:
    """The shrinkage-regularised H-score ``tr(cov(f)^-1 (1 - a) cov(E[f | y]))``.

    ``cov(f)`` is scikit-learn's Ledoit-Wolf estimate (shrinkage ``a``), which stays well conditioned
    when ``n_features`` exceeds ``n_samples``; ``E[f | y]`` replaces each sample by its class mean.

    Sources: Y. Bao, Y. Li, S.-L. Huang, L. Zhang, L. Zheng, A. Zamir, L. Guibas, "An
    Information-Theoretic Approach to Transferability in Task Transfer Learning", ICIP 2019 (the
    H-score); S. Ibrahim, N. Ponomareva, R. Mazumder, "Newer is not always better: Rethinking
    transferability metrics, their peculiarities, stability and performance", ECML-PKDD 2022 (the
    shrinkage estimate).

    Args:
        features: Shape ``(n_samples, n_features)``.
        labels: Shape ``(n_samples,)``, class indices.

    Returns:
        The score (dimensionless, at most ``n_classes - 1``; higher is better).

    Raises:
        DataError: Shapes disagree, a value is not finite, or fewer than two classes.
    """
    f, y = _check(features, labels)
    f = f - f.mean(axis=0)
    estimate = LedoitWolf(assume_centered=True, store_precision=False).fit(f)  # no pseudo-inverse: solved below
    classes, index = np.unique(y, return_inverse=True)
    means = np.stack([f[index == c].mean(axis=0) for c in range(len(classes))])
    g = means[index]  # (n_samples, n_features): each sample's class mean
    cov_g = g.T @ g / len(g)
    inner = linalg.solve(estimate.covariance_, (1 - estimate.shrinkage_) * cov_g, assume_a="pos")
    return float(np.trace(inner))


def knn_accuracy(features: NDArray[np.floating], labels: NDArray[np.integer], *,
                 n_neighbors: int = KNN_NEIGHBORS) -> float:
    """Leave-one-out accuracy of a k-nearest-neighbour vote on L2-normalised (cosine) features.

    Every sample is classified by the majority label of its ``n_neighbors`` nearest other samples
    (ties go to the smallest class index, as scikit-learn's uniform-weight ``KNeighborsClassifier``
    breaks them). After L2 normalisation the Euclidean neighbours are the cosine ones, as in the k-NN
    evaluation of self-supervised features (Z. Wu, Y. Xiong, S. Yu, D. Lin, "Unsupervised Feature
    Learning via Non-Parametric Instance Discrimination", CVPR 2018). scikit-learn's
    ``NearestNeighbors.kneighbors()`` without query points leaves each sample out of its own
    neighbours, so one fit gives the exact leave-one-out estimate. k-NN accuracy ranked backbones
    better than 22 published estimators in A. Sorkhei et al., "k-NN as a Simple and Effective
    Estimator of Transferability", arXiv 2503.18528 (2025).

    Args:
        features: Shape ``(n_samples, n_features)``.
        labels: Shape ``(n_samples,)``, class indices.
        n_neighbors: Neighbours that vote (at most ``n_samples - 1``).

    Returns:
        Accuracy in [0, 1].

    Raises:
        DataError: Shapes disagree, a value is not finite, fewer than two classes, or ``n_neighbors``
            is not a positive integer.
    """
    f, y = _check(features, labels)
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, int) or n_neighbors < 1:
        raise DataError(describe("n_neighbors", "a positive integer", n_neighbors))
    k = min(n_neighbors, len(y) - 1)
    _, index = NearestNeighbors(n_neighbors=k).fit(normalize(f)).kneighbors()  # (n_samples, k), self excluded
    votes = np.zeros((len(y), int(y.max()) + 1))
    np.add.at(votes, (np.repeat(np.arange(len(y)), k), y[index].ravel()), 1.0)
    return float(np.mean(votes.argmax(axis=1) == y))


def linear_probe_accuracy(features: NDArray[np.floating], labels: NDArray[np.integer], *,
                          folds: int = LINEAR_PROBE_FOLDS, seed: int = 0, max_iter: int = 2000) -> float:
    """Stratified k-fold accuracy of a logistic regression on standardised features (train split only).

    scikit-learn's ``StandardScaler`` then ``LogisticRegression`` (L-BFGS solver, L2 penalty with
    ``C = 1``, multinomial loss), scored by ``cross_val_score`` on ``StratifiedKFold`` folds: the
    fixed-feature linear probe of S. Kornblith, J. Shlens, Q. V. Le, "Do Better ImageNet Models
    Transfer Better?", CVPR 2019, without its search over ``C``. Cross-validating on train keeps the
    val split for the search alone.

    Args:
        features: Shape ``(n_samples, n_features)``.
        labels: Shape ``(n_samples,)``, class indices.
        folds: Cross-validation folds (fewer when the smallest class has fewer samples; at least 2).
        seed: Shuffles the folds.
        max_iter: L-BFGS iterations allowed; hitting it leaves the warning scikit-learn gives.

    Returns:
        Mean accuracy over the folds, in [0, 1].

    Raises:
        DataError: Shapes disagree, a value is not finite, fewer than two classes, or a class with a
            single sample (it cannot be in a training and a scoring fold).
    """
    f, y = _check(features, labels)
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < 2:
        raise DataError(describe("labels", "at least two samples of every class for the cross-validated linear "
                                 "probe", f"a class of {smallest}"))
    cv = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("default", ConvergenceWarning)
        return float(np.mean(cross_val_score(model, f, y, cv=cv, scoring="accuracy")))


def score_features(features: NDArray[np.floating], labels: NDArray[np.integer], *, seed: int = 0) -> dict[str, float]:
    """Every score of :data:`SCORES` for one backbone, from its train features alone.

    Args:
        features: Train features, shape ``(n_train, n_features)``.
        labels: Shape ``(n_train,)``, class indices.
        seed: Shuffles the linear probe's folds.

    Returns:
        ``{"knn": ..., "logme": ..., "h_score": ..., "linear_probe": ...}`` in the order of :data:`SCORES`.

    Raises:
        DataError: As the scores raise it.
    """
    scores = {"knn": knn_accuracy(features, labels), "logme": logme(features, labels),
              "h_score": h_score(features, labels), "linear_probe": linear_probe_accuracy(features, labels, seed=seed)}
    return {name: scores[name] for name in SCORES}
