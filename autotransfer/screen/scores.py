"""Transferability scores of a backbone from its pooled features (NumPy, SciPy and scikit-learn only).

Every score takes the features of the labelled train split, shape ``(n_samples, n_features)``, and
its labels, shape ``(n_samples,)`` (class indices); higher is better for all of them:

* :func:`logme`: the log marginal evidence of a Bayesian linear model per class (You et al., 2021);
* :func:`h_score`: the shrinkage-regularised H-score (Bao et al., 2019, with the Ledoit-Wolf
  covariance of Ibrahim et al., 2022);
* :func:`knn_accuracy`: the cross-validated accuracy of a k-nearest-neighbour classifier;
* :func:`linear_probe_accuracy`: the val accuracy of a converged logistic regression on train.

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
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler

from autotransfer.errors import DataError, describe
from autotransfer.settings import SCREEN_SCORES

__all__ = ["SCORES", "h_score", "knn_accuracy", "linear_probe_accuracy", "logme", "score_features"]

SCORES = SCREEN_SCORES  # ("logme", "h_score", "knn", "linear_probe"), validated by SearchSettings
_LOGME_MAX_ITER = 100
_LOGME_TOL = 1e-3  # relative change of alpha / beta that ends the fixed-point iteration


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
    ``N(0, 1/beta)``; ``alpha`` and ``beta`` are set by MacKay's fixed-point iteration and the log
    evidence ``log p(y_k | F, alpha, beta)`` is averaged over classes and divided by ``n_samples``.
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
    s = sigma**2  # eigenvalues of F^T F (the other d - rank are 0)
    evidences = []
    for k in np.unique(y):
        target = (y == k).astype(np.float64)
        z = u.T @ target  # target in the left singular basis
        outside = float(target @ target - z @ z)  # part of the target outside F's column space
        alpha, beta = 1.0, 1.0
        for _ in range(_LOGME_MAX_ITER):
            denom = alpha + beta * s
            gamma = float(np.sum(beta * s / denom))
            m_sq = float(np.sum((beta * sigma * z / denom) ** 2))  # |m|^2, m the posterior mean of w
            residual = float(np.sum((alpha * z / denom) ** 2)) + outside  # |y - F m|^2
            new_alpha, new_beta = gamma / max(m_sq, 1e-12), (n - gamma) / max(residual, 1e-12)
            done = (abs(new_alpha - alpha) / alpha < _LOGME_TOL and abs(new_beta - beta) / beta < _LOGME_TOL)
            alpha, beta = new_alpha, new_beta
            if done:
                break
        denom = alpha + beta * s
        m_sq = float(np.sum((beta * sigma * z / denom) ** 2))
        residual = float(np.sum((alpha * z / denom) ** 2)) + outside
        log_det = float(np.sum(np.log(denom))) + (d - len(s)) * np.log(alpha)  # log |alpha I + beta F^T F|
        evidence = (d / 2 * np.log(alpha) + n / 2 * np.log(beta) - log_det / 2 - beta / 2 * residual
                    - alpha / 2 * m_sq - n / 2 * np.log(2 * np.pi))
        evidences.append(evidence / n)
    return float(np.mean(evidences))


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
    estimate = LedoitWolf(assume_centered=True).fit(f)
    classes, index = np.unique(y, return_inverse=True)
    means = np.stack([f[index == c].mean(axis=0) for c in range(len(classes))])
    g = means[index]  # (n_samples, n_features): each sample's class mean
    cov_g = g.T @ g / len(g)
    inner = linalg.solve(estimate.covariance_, (1 - estimate.shrinkage_) * cov_g, assume_a="pos")
    return float(np.trace(inner))


def knn_accuracy(features: NDArray[np.floating], labels: NDArray[np.integer], *, n_neighbors: int = 5,
                 folds: int = 5, seed: int = 0) -> float:
    """Mean stratified k-fold accuracy of a k-nearest-neighbour classifier on L2-normalised features.

    Normalising first makes the Euclidean neighbours the cosine ones, as in the k-NN evaluation of
    self-supervised features (Z. Wu, Y. Xiong, S. Yu, D. Lin, "Unsupervised Feature Learning via
    Non-Parametric Instance Discrimination", CVPR 2018). scikit-learn's ``KNeighborsClassifier``
    and ``cross_val_score``.

    Args:
        features: Shape ``(n_samples, n_features)``.
        labels: Shape ``(n_samples,)``, class indices.
        n_neighbors: Neighbours that vote (fewer when a training fold is smaller).
        folds: Cross-validation folds (fewer when the smallest class has fewer samples; at least 2).
        seed: Shuffles the folds.

    Returns:
        Accuracy in [0, 1].

    Raises:
        DataError: Shapes disagree, a value is not finite, fewer than two classes, or a class with
            a single sample.
    """
    f, y = _check(features, labels)
    smallest = int(np.bincount(y)[np.unique(y)].min())
    if smallest < 2:
        raise DataError(describe("labels", "at least two samples of every class for k-NN", f"a class of {smallest}"))
    cv = StratifiedKFold(n_splits=min(folds, smallest), shuffle=True, random_state=seed)
    k = max(1, min(n_neighbors, len(y) - len(y) // cv.get_n_splits()))
    model = make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=k))
    return float(np.mean(cross_val_score(model, f, y, cv=cv, scoring="accuracy")))


def linear_probe_accuracy(train: NDArray[np.floating], train_labels: NDArray[np.integer],
                          val: NDArray[np.floating], val_labels: NDArray[np.integer], *,
                          max_iter: int = 2000) -> float:
    """Val accuracy of a logistic regression trained to convergence on standardised train features.

    scikit-learn's ``LogisticRegression`` (L-BFGS, L2 penalty ``C = 1``) after ``StandardScaler``: the
    fixed-feature linear probe of S. Kornblith, J. Shlens, Q. V. Le, "Do Better ImageNet Models
    Transfer Better?", CVPR 2019, without its search over ``C``.

    Args:
        train: Shape ``(n_train, n_features)``.
        train_labels: Shape ``(n_train,)``, class indices.
        val: Shape ``(n_val, n_features)``.
        val_labels: Shape ``(n_val,)``, class indices.
        max_iter: L-BFGS iterations allowed; hitting it leaves the warning scikit-learn gives.

    Returns:
        Accuracy in [0, 1].

    Raises:
        DataError: Shapes disagree, a value is not finite, or fewer than two classes in train.
    """
    f, y = _check(train, train_labels)
    v = np.asarray(val, dtype=np.float64)
    if v.ndim != 2 or v.shape[1] != f.shape[1] or len(v) != len(val_labels) or len(v) == 0:
        raise DataError(describe("val", f"a non-empty array (n_val, {f.shape[1]}) with one label per row",
                                 f"val {v.shape}, labels {np.shape(val_labels)}"))
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter))
    with warnings.catch_warnings():
        warnings.simplefilter("default", ConvergenceWarning)
        model.fit(f, y)
    return float(model.score(v, np.asarray(val_labels)))


def score_features(train: NDArray[np.floating], train_labels: NDArray[np.integer],
                   val: NDArray[np.floating], val_labels: NDArray[np.integer]) -> dict[str, float]:
    """Every score of :data:`SCORES` for one backbone.

    Args:
        train: Train features, shape ``(n_train, n_features)``.
        train_labels: Shape ``(n_train,)``.
        val: Val features, shape ``(n_val, n_features)`` (used by the linear probe only).
        val_labels: Shape ``(n_val,)``.

    Returns:
        ``{"logme": ..., "h_score": ..., "knn": ..., "linear_probe": ...}``.

    Raises:
        DataError: As the scores raise it.
    """
    return {"logme": logme(train, train_labels), "h_score": h_score(train, train_labels),
            "knn": knn_accuracy(train, train_labels),
            "linear_probe": linear_probe_accuracy(train, train_labels, val, val_labels)}
