"""Search, refit the winner on the full budget, export it, load it back and predict, from Python.

Run: AUTOTRANSFER_ZOO=../shared/data/weights/zoo.yaml python examples/refit_api.py [DATA] [N_TRIALS] [EPOCHS]

DATA defaults to scikit-learn's bundled digits (split 70/15/15: the refit trains on train+val and
is tested once on test); give an image folder for your own data. The model is saved in
examples_out/refit/model (model.safetensors and model.json).
"""

from __future__ import annotations

import sys
from pathlib import Path

import autotransfer


def main(data: str = "digits", n_trials: int = 4, epochs: int = 2, out: str = "examples_out/refit") -> None:
    space = "demo" if data == "digits" else "small"
    result = autotransfer.search(data, space=space, n_trials=n_trials, epochs=epochs, out=out, seed=0)
    print("best strategy:", result.best)

    model = result.refit()  # the best trial's strategy, full budget, no pruning; evaluated once
    held_out = "test" if "test" in model.metrics else "val"
    print(f"refit on {model.training['train_on']} ({model.training['n_images']} images), "
          f"{held_out} accuracy: {model.metrics[held_out]['accuracy']:.4f}")
    model.save(Path(out) / "model")

    loaded = autotransfer.load_model(Path(out) / "model")  # safetensors + JSON: nothing is unpickled
    dataset = result.dataset
    assert dataset is not None
    split = dataset.splits[held_out][:8]
    images = [dataset.load(key) for key, _ in split]  # PIL images; paths and arrays work too
    print("true:     ", [dataset.classes[label] for _, label in split])
    print("predicted:", list(loaded.predict(images)))
    print("probabilities:\n", loaded.predict_proba(images).round(3))


if __name__ == "__main__":
    args = sys.argv[1:]
    main(args[0] if args else "digits", *(int(a) for a in args[1:3]))
