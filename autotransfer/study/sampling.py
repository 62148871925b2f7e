"""The sampler and pruner a study uses (Optuna only; importing this module does not load PyTorch).

Defaults: ``TPESampler`` with every option that changed between Optuna 4 and 5 passed
explicitly, and ``HyperbandPruner`` over epochs (Li et al., 2018, "Hyperband", JMLR 18(185)).

The settings were chosen by replaying searches against a recorded grid of 144 strategies on three
datasets (``benchmarks/README.md``, "Search quality"): Hyperband's ``reduction_factor`` is 2, not
Optuna's 3. With 3, the default search reached within one point of the grid's best val accuracy
in only 6 of 20 seeds on hymenoptera (a strong strategy dips after epoch 1 and was pruned); with 2,
in 20 of 20, within the seed spread on the other two datasets. Five TPE startup trials did as well
as ten.
"""

from __future__ import annotations

import warnings

import optuna

from autotransfer.errors import ConfigError, describe
from autotransfer.settings import PRUNERS

__all__ = ["REDUCTION_FACTORS", "make_pruner", "make_sampler"]

# Default reduction factors: Hyperband's measured in benchmarks/README.md ("Search quality");
# successive halving keeps Optuna's 3 (2 measured no better there).
REDUCTION_FACTORS = {"hyperband": 2, "sha": 3}


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


def make_pruner(name: str, epochs: int, *, reduction_factor: int | None = None) -> optuna.pruners.BasePruner:
    """Build a pruner over epochs.

    Args:
        name: ``"hyperband"`` (default; ``min_resource=1``, ``max_resource=epochs``),
            ``"median"`` (after 2 complete trials), ``"sha"`` (successive halving,
            ``min_resource=1``) or ``"none"``.
        epochs: The budget's maximum epochs.
        reduction_factor: Hyperband's and successive halving's ``reduction_factor``: the share
            ``1/reduction_factor`` of trials at a rung goes on to the next. None:
            :data:`REDUCTION_FACTORS` (2 for Hyperband, 3 for successive halving).

    Raises:
        ConfigError: Unknown name, or a reduction factor that is not an integer >= 2.
    """
    if reduction_factor is None:
        reduction_factor = REDUCTION_FACTORS.get(name, 3)
    if isinstance(reduction_factor, bool) or not isinstance(reduction_factor, int) or reduction_factor < 2:
        raise ConfigError(describe("reduction_factor", "an integer >= 2", reduction_factor))
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=reduction_factor)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=reduction_factor)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise ConfigError(describe("pruner", f"one of {list(PRUNERS)}", name))
