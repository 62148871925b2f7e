"""Search transfer strategies from Python and read the ranked result.

Run: AUTOTRANSFER_ZOO=../shared/data/weights/zoo.yaml python examples/search_api.py [DATA] [N_TRIALS] [EPOCHS]

DATA defaults to scikit-learn's bundled digits; give an image folder (one subfolder per class, or
train/ and val/ folders) for your own data. The study is stored in examples_out/study.db: run
the script again with a larger N_TRIALS to continue the same study.
"""

from __future__ import annotations

import sys

import autotransfer


def main(data: str = "digits", n_trials: int = 4, epochs: int = 2, out: str = "examples_out") -> None:
    result = autotransfer.search(data, space="demo", n_trials=n_trials, epochs=epochs, out=out, seed=0)
    board = result.leaderboard
    print(board[["rank", "number", "state", "value", "family", "params_learning_rate", "seconds"]].to_string())
    print("best strategy:", result.best)
    print("best val accuracy:", result.best_value)
    print("Optuna study:", result.study.study_name, "with", len(result.study.trials), "trials")


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "digits", *(int(a) for a in args[1:3]))
