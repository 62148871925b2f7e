"""The sampler and pruner a study uses (Optuna only; importing this module does not load PyTorch).

Defaults (DESIGN.md): ``TPESampler`` with every option that changed between Optuna 4 and 5 passed
explicitly, and ``HyperbandPruner`` over epochs (Li et al., 2018, "Hyperband", JMLR 18(185)).
"""

from __future__ import annotations

import warnings

import optuna

from .errors import ConfigError, describe

__all__ = ["PRUNERS", "make_pruner", "make_sampler"]

PRUNERS = ("hyperband", "median", "sha", "none")


def make_sampler(seed: int, n_startup_trials: int = 5) -> optuna.samplers.TPESampler:
    """The default sampler: seeded multivariate TPE (Bergstra et al., 2011; Falkner et al., 2018).

    ``constant_liar`` keeps parallel workers from sampling the same point (Optuna docs).

    Args:
        seed: Sampler seed.
        n_startup_trials: Random trials before TPE models the space.
    """
    with warnings.catch_warnings():  # `group` and `constant_liar` are flagged experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, group=True, constant_liar=True,
                                          n_startup_trials=n_startup_trials)


def make_pruner(name: str, epochs: int) -> optuna.pruners.BasePruner:
    """Build a pruner over epochs.

    Args:
        name: ``"hyperband"`` (default; ``min_resource=1``, ``max_resource=epochs``,
            ``reduction_factor=3``), ``"median"`` (after 2 complete trials), ``"sha"`` (successive
            halving, ``min_resource=1``, ``reduction_factor=3``) or ``"none"``.
        epochs: The budget's maximum epochs.

    Raises:
        ConfigError: Unknown name.
    """
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(describe("pruner", f"one of {list(PRUNERS)}", name))
