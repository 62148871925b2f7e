"""autotransfer as a scikit-learn estimator: cross-validate the whole search, inside a Pipeline.

Run: AUTOTRANSFER_ZOO=../shared/data/weights/zoo.yaml python examples/sklearn_estimator.py [N_IMAGES] [N_TRIALS]

Each fold runs its own search on its training images (split again into train and val) and refits
the winner on all of them, so the score of every fold is a fair estimate of "search, then refit".
The images are scikit-learn's digits (8x8 arrays of floats 0-16); a FunctionTransformer scales
them to 0-1 floats, which TransferClassifier accepts like uint8 arrays, PIL images or file paths.
"""

from __future__ import annotations

import sys

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from autotransfer import TransferClassifier


def to_unit_range(images: np.ndarray) -> np.ndarray:
    """Digits hold 0-16; images as floats must lie in [0, 1]."""
    return images / 16.0


def main(n_images: int = 500, n_trials: int = 4, epochs: int = 3, cv: int = 3) -> None:
    digits = load_digits()
    X, y = digits.images[:n_images], digits.target[:n_images]  # X: (N, 8, 8)
    classifier = TransferClassifier(space="demo", n_trials=n_trials, epochs=epochs, seed=0, baseline=False,
                                    finalists=0)  # inside cross_val_score: no confirmation stage per fold
    pipeline = make_pipeline(FunctionTransformer(to_unit_range), classifier)
    scores = cross_val_score(pipeline, X, y, cv=cv, error_score="raise")
    print(f"{cv}-fold accuracy of search + refit: {scores.round(4).tolist()} (mean {scores.mean():.4f})")

    pipeline.fit(X, y)
    fitted = pipeline[-1]
    print("best strategy:", fitted.best_params_, f"val accuracy {fitted.best_score_:.4f}")
    print(fitted.search_results_[["rank", "number", "state", "value", "family"]].to_string(index=False))
    print("first predictions:", pipeline.predict(X[:10]).tolist(), "true:", y[:10].tolist())


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]))
