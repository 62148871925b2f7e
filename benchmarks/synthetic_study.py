"""A synthetic study shaped like one ``autotransfer search`` writes, for report benchmarks and tests.

Trials are made with ``optuna.trial.create_trial`` over the bundled default space: about half
complete, a third pruned, a tenth failed and a few running, with per-epoch intermediate values,
the user attributes the objective records (val predictions included) and a baseline trial 0.
Nothing here trains a model; the numbers are random draws, so they stand in for shape and size
only, never for accuracy claims.
"""

from __future__ import annotations

import random

import optuna
from optuna.distributions import CategoricalDistribution, FloatDistribution
from optuna.trial import TrialState, create_trial

from autotransfer import load_search_space
from autotransfer.space.strategy import strategy_family

__all__ = ["make_synthetic_study"]

_STATES = [TrialState.COMPLETE] * 50 + [TrialState.PRUNED] * 35 + [TrialState.FAIL] * 10 + [TrialState.RUNNING] * 5


def make_synthetic_study(n_trials: int, *, storage: str | None = None, study_name: str = "synthetic",
                         n_classes: int = 5, n_val: int = 150, epochs: int = 3, seed: int = 0) -> optuna.Study:
    """Create a study of ``n_trials`` synthetic trials.

    Args:
        n_trials: Number of trials (trial 0 is the baseline).
        storage: Optuna storage URL (None: in memory).
        study_name: The study's name.
        n_classes: Classes of the fake dataset.
        n_val: Val images (each complete trial stores one prediction per image).
        epochs: The budget's epochs.
        seed: Seed of the random draws.

    Returns:
        The study, with the user attributes ``autotransfer.config`` and ``autotransfer.split``.
    """
    rng = random.Random(seed)
    space = load_search_space("default")
    classes = [f"class_{k}" for k in range(n_classes)]
    labels = [k % n_classes for k in range(n_val)]
    study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize")
    study.set_user_attr("autotransfer.config", {
        "dataset": {"name": "synthetic", "classes": classes,
                    "counts": {"train": 4 * n_val, "val": n_val, "test": n_val}, "fingerprint": "synthetic"},
        "split": {"method": "stratified", "seed": seed}, "space": space.as_dict(),
        "budget": {"epochs": epochs, "batch_size": 32, "metric": "accuracy", "weight_decay": 0.01},
        "baseline": {"params": space.baseline().as_dict(), "changes": []}})
    study.set_user_attr("autotransfer.split", {"val": [[f"v{k}.jpg", y] for k, y in enumerate(labels)],
                                               "test": [[f"t{k}.jpg", y] for k, y in enumerate(labels)]})
    distributions = {"backbone": CategoricalDistribution(space.backbones),
                     "freeze_depth": FloatDistribution(0.0, 1.0, step=0.25),
                     "head_width": CategoricalDistribution([0, 256, 1024]),
                     "learning_rate": FloatDistribution(1e-5, 1e-2, log=True)}
    trials = [_trial(number, rng, space.backbones, distributions, labels, n_classes, epochs)
              for number in range(n_trials)]
    study.add_trials(trials)
    complete = [n for n, t in enumerate(trials) if t.state == TrialState.COMPLETE]
    if complete:  # trials from create_trial are numbered when added: their number is their position
        best = max(complete, key=lambda n: (trials[n].value or 0.0, -n))
        study.set_user_attr("autotransfer.test", {"trial": best, "metrics": {
            "accuracy": 0.8, "balanced_accuracy": 0.8, "macro_f1": 0.79, "loss": 0.5},
            "predictions": _predictions(rng, labels, n_classes, 0.8)})
    return study


def _trial(number: int, rng: random.Random, backbones: list[str], distributions: dict[str, object],
           labels: list[int], n_classes: int, epochs: int) -> optuna.trial.FrozenTrial:
    baseline = number == 0
    params = {"backbone": backbones[0] if baseline else rng.choice(backbones),
              "freeze_depth": 1.0 if baseline else rng.choice([0.0, 0.25, 0.5, 0.75, 1.0]),
              "head_width": 1024 if baseline else rng.choice([0, 256, 1024]),
              "learning_rate": 1e-4 if baseline else 10 ** rng.uniform(-5, -2)}
    state = TrialState.COMPLETE if baseline else rng.choice(_STATES)
    final = rng.uniform(0.5, 0.95)
    run = {TrialState.COMPLETE: epochs, TrialState.PRUNED: rng.randint(1, epochs - 1) if epochs > 1 else 1,
           TrialState.FAIL: rng.randint(0, epochs - 1), TrialState.RUNNING: rng.randint(1, epochs - 1)}[state]
    curve = {epoch: final * (1 - 0.25 / epoch) + rng.gauss(0, 0.01) for epoch in range(1, run + 1)}
    seconds = rng.uniform(20, 200) * run / epochs
    attrs: dict[str, object] = {
        "family": strategy_family(str(params["backbone"]), float(params["freeze_depth"]), int(params["head_width"])),
        "trainable_params": rng.randint(10_000, 5_000_000), "total_params": 5_000_000, "epochs": run,
        "seconds": round(seconds, 3), "n_groups": 8, "n_frozen_groups": int(8 * float(params["freeze_depth"]))}
    if curve:
        attrs.update({"val_accuracy": curve[run], "val_balanced_accuracy": curve[run], "val_macro_f1": curve[run],
                      "val_loss": 1 - curve[run]})
    attrs["stop_reason"] = {TrialState.COMPLETE: "completed", TrialState.PRUNED: f"pruned at epoch {run}",
                            TrialState.FAIL: "diverged: loss is nan at epoch 1 step 3", TrialState.RUNNING: ""}[state]
    if baseline:
        attrs["baseline"] = True
    if state == TrialState.COMPLETE:
        attrs["val_predictions"] = _predictions(rng, labels, n_classes, curve[run])
    return create_trial(state=state, value=curve[run] if state == TrialState.COMPLETE else None, params=params,
                        distributions=distributions,  # type: ignore[arg-type]
                        user_attrs=attrs, intermediate_values=curve)


def _predictions(rng: random.Random, labels: list[int], n_classes: int, accuracy: float) -> list[int]:
    return [y if rng.random() < accuracy else rng.randrange(n_classes) for y in labels]
