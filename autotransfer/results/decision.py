"""The decision among confirmed finalists: a clear leader, practically equivalent, or undecided (no PyTorch).

Each finalist was trained R times on the same seeds (and, on small data, the same re-drawn train/val
splits), so comparisons are paired. "Not significant" is not "equivalent": with three repeats a
significance test calls almost everything a tie, so the decision uses a region of practical
equivalence (ROPE, ``tie_margin``) and posterior probabilities:

* **Re-drawn splits** (each repeat trains and validates on another stratified split of train+val):
  the Bayesian correlated t-test (Corani and Benavoli, "A Bayesian approach for comparing
  cross-validated algorithms on multiple data sets", Machine Learning 2015; Benavoli et al., "Time for
  a change", JMLR 2017). The mean paired difference has a Student posterior with ``R - 1`` degrees of
  freedom, location the mean difference and scale ``sqrt((1/R + rho/(1 - rho)) * var)``, where
  ``rho = n_val / (n_train + n_val)`` is the correlation of overlapping training sets (Nadeau and
  Bengio, Machine Learning 2003). It is written here with SciPy's ``t`` distribution (a few lines;
  ``baycomp`` implements the same test but is not a dependency).
* **Seed-only repeats on a fixed val set**: a paired bootstrap over val images (Efron and
  Tibshirani, "An Introduction to the Bootstrap", 1993) of each finalist's per-image correctness
  averaged over the seeds, resampling images with replacement.

With ``P(lead)``, ``P(tie)`` and ``P(trail)`` the posterior probabilities that the best-mean finalist
is ahead by more than the margin, within it, or behind, and a threshold of 0.95 (baycomp's default
decision rule): a **clear leader** when ``P(lead) >= 0.95`` against every other finalist; **practically
equivalent** when each other finalist is either clearly behind or tied (``P(tie) >= 0.95``) and at least
one is tied, and then the cheapest of the tied group is recommended (inference images per second on this
machine first, then training seconds, then trainable parameters); otherwise **undecided**, recommending the
best mean and saying how many more repeats would decide.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import stats

__all__ = ["DECISION_THRESHOLD", "Comparison", "Decision", "FinalistRuns", "bootstrap_posterior",
           "correlated_t_posterior", "decide"]

DECISION_THRESHOLD = 0.95  # posterior probability that decides (baycomp's default)
OUTCOMES = ("clear leader", "practically equivalent", "undecided")
_BOOTSTRAP_DRAWS = 4000
_MAX_REPEATS = 50  # the "repeats needed" estimate looks this far


@dataclass(frozen=True)
class FinalistRuns:
    """What the repeats of one finalist measured, in repeat order (the same repeats for every finalist).

    Attributes:
        name: The finalist, e.g. its search trial number as text.
        scores: Val metric of each repeat, shape ``(R,)``, in [0, 1].
        correct: Per-image correctness on the fixed val set, shape ``(R, N)`` (seed-only repeats), or None.
        images_per_second: Inference throughput of the trained network on images, this machine.
        train_seconds: Mean training seconds of a repeat.
        trainable_params: Parameters trained.
    """

    name: str
    scores: Sequence[float]
    correct: Sequence[Sequence[bool]] | None = None
    images_per_second: float = 0.0
    train_seconds: float = 0.0
    trainable_params: int = 0

    @property
    def mean(self) -> float:
        """Mean val score over the repeats."""
        return float(np.mean(self.scores))

    def interval(self) -> tuple[float, float]:
        """The 95% Student-t interval of the mean score over the repeats (``scipy.stats.t.interval``)."""
        scores = np.asarray(self.scores, dtype=float)
        sem = float(stats.sem(scores))
        if sem == 0.0:
            return self.mean, self.mean
        low, high = stats.t.interval(0.95, len(scores) - 1, loc=scores.mean(), scale=sem)
        return float(low), float(high)

    def cost_key(self) -> tuple[float, float, int]:
        """Sorts cheapest first: fastest inference, then shortest training, then fewest trainable parameters."""
        return (-self.images_per_second, self.train_seconds, self.trainable_params)


@dataclass(frozen=True)
class Comparison:
    """The posterior of (best-mean finalist - another), in metric units (fractions of images).

    Attributes:
        other: The other finalist's name.
        mean: Observed mean paired difference.
        low: Lower end of the 95% credible interval.
        high: Upper end of the 95% credible interval.
        p_lead: ``P(difference > margin)``.
        p_tie: ``P(|difference| <= margin)``.
        p_trail: ``P(difference < -margin)``.
        test: ``"correlated t-test"`` or ``"paired bootstrap"``.
    """

    other: str
    mean: float
    low: float
    high: float
    p_lead: float
    p_tie: float
    p_trail: float
    test: str

    @property
    def verdict(self) -> str:
        """``"lead"``, ``"tie"`` or ``"undecided"`` at :data:`DECISION_THRESHOLD`."""
        if self.p_lead >= DECISION_THRESHOLD:
            return "lead"
        return "tie" if self.p_tie >= DECISION_THRESHOLD else "undecided"


@dataclass(frozen=True)
class Decision:
    """The outcome of a confirmation.

    Attributes:
        outcome: One of ``"clear leader"``, ``"practically equivalent"``, ``"undecided"``.
        recommended: The name of the recommended finalist.
        best_mean: The name of the finalist with the best mean score.
        comparisons: The best-mean finalist against each other one.
        group: The practically equivalent group the recommendation was chosen from (its members' names).
        margin: The tie margin (metric units).
        detectable: The smallest difference the repeats resolve: the margin plus the widest half-width
            of the 95% intervals (metric units).
        repeats_needed: For "undecided" with re-drawn splits, the number of repeats at which the same
            means and spreads would decide; None when no number up to 50 would, or not applicable.
        reason: One sentence saying why the recommendation was made.
    """

    outcome: str
    recommended: str
    best_mean: str
    comparisons: list[Comparison] = field(default_factory=list)
    group: list[str] = field(default_factory=list)
    margin: float = 0.01
    detectable: float = 0.0
    repeats_needed: int | None = None
    reason: str = ""

    def as_dict(self) -> dict[str, Any]:
        """A JSON-serialisable record (stored with the confirmation study)."""
        return {"outcome": self.outcome, "recommended": self.recommended, "best_mean": self.best_mean,
                "comparisons": [vars(c) for c in self.comparisons], "group": self.group, "margin": self.margin,
                "detectable": self.detectable, "repeats_needed": self.repeats_needed, "reason": self.reason}


def correlated_t_posterior(differences: Sequence[float], rho: float, margin: float,
                           n_repeats: int | None = None) -> tuple[float, float, float, float, float]:
    """Posterior of the mean paired difference over re-drawn splits (Bayesian correlated t-test).

    Args:
        differences: Paired differences of the val metric, one per repeat, shape ``(R,)``, ``R >= 2``.
        rho: Correlation of the repeats: ``n_val / (n_train + n_val)`` of one split, in (0, 1).
        margin: Half-width of the region of practical equivalence (metric units, >= 0).
        n_repeats: Evaluate as if there were this many repeats with the same mean and spread (for
            "how many more repeats would decide"); default ``R``.

    Returns:
        ``(p_lead, p_tie, p_trail, low, high)``: the probabilities of a difference above ``margin``,
        within it and below ``-margin``, and the 95% credible interval.

    Raises:
        ValueError: Fewer than two differences, or ``rho`` outside (0, 1).
    """
    x = np.asarray(differences, dtype=float)
    if x.size < 2 or not 0 < rho < 1:
        raise ValueError(f"need at least 2 differences and rho in (0, 1); got {x.size} and {rho}")
    n = n_repeats or x.size
    mean, var = float(x.mean()), float(x.var(ddof=1))
    var = max(var, 1e-12)  # identical differences: a point mass, kept numerically proper (as baycomp does)
    posterior = stats.t(df=n - 1, loc=mean, scale=math.sqrt((1 / n + rho / (1 - rho)) * var))
    p_trail, below_margin = float(posterior.cdf(-margin)), float(posterior.cdf(margin))
    low, high = posterior.ppf([0.025, 0.975])
    return 1.0 - below_margin, below_margin - p_trail, p_trail, float(low), float(high)


def bootstrap_posterior(correct_a: Sequence[Sequence[bool]], correct_b: Sequence[Sequence[bool]], margin: float,
                        *, seed: int = 0) -> tuple[float, float, float, float, float]:
    """Paired bootstrap over val images of the seed-averaged correctness difference (a - b).

    Args:
        correct_a: Per-image correctness of finalist a, shape ``(R, N)`` (R seeds, N val images).
        correct_b: The same for finalist b, on the same images in the same order.
        margin: Half-width of the region of practical equivalence (metric units).
        seed: Seeds the resampling.

    Returns:
        ``(p_lead, p_tie, p_trail, low, high)`` as in :func:`correlated_t_posterior`, from 4,000 resamples.

    Raises:
        ValueError: The shapes differ or there is no image.
    """
    a, b = np.asarray(correct_a, dtype=float), np.asarray(correct_b, dtype=float)
    if a.shape != b.shape or a.ndim != 2 or a.shape[1] == 0:
        raise ValueError(f"correctness of shapes {a.shape} and {b.shape}; expected the same (R, N)")
    delta = a.mean(axis=0) - b.mean(axis=0)
    rng = np.random.default_rng(seed)
    draws = delta[rng.integers(0, delta.size, size=(_BOOTSTRAP_DRAWS, delta.size))].mean(axis=1)
    low, high = np.percentile(draws, [2.5, 97.5])
    p_lead, p_trail = float(np.mean(draws > margin)), float(np.mean(draws < -margin))
    return p_lead, 1.0 - p_lead - p_trail, p_trail, float(low), float(high)


def decide(finalists: Sequence[FinalistRuns], *, margin: float = 0.01, rho: float | None = None,
           seed: int = 0) -> Decision:
    """Decide among confirmed finalists (module docstring: the tests, the outcomes, the cost order).

    Args:
        finalists: At least two, each with the same number of repeats (and val images, for the bootstrap).
        margin: The tie margin in metric units (0.01: one point of accuracy).
        rho: ``n_val / (n_train + n_val)`` when the repeats re-drew the split (correlated t-test); None for
            seed-only repeats on a fixed val set (paired bootstrap; needs ``correct``).
        seed: Seeds the bootstrap.

    Returns:
        The :class:`Decision`.

    Raises:
        ValueError: Fewer than two finalists or repeats, unequal repeat counts, or a bootstrap without
            per-image correctness.
    """
    if len(finalists) < 2 or len({len(f.scores) for f in finalists}) != 1 or len(finalists[0].scores) < 2:
        raise ValueError("need at least two finalists with the same number (>= 2) of repeats")
    ranked = sorted(finalists, key=lambda f: -f.mean)
    best = ranked[0]
    comparisons = [_compare(best, other, margin, rho, seed) for other in ranked[1:]]
    verdicts = {c.other: c.verdict for c in comparisons}
    widest = max((c.high - c.low) / 2 for c in comparisons)
    detectable = margin + widest
    if all(v == "lead" for v in verdicts.values()):
        return Decision("clear leader", best.name, best.name, comparisons, [best.name], margin, detectable,
                        reason=f"{best.name} leads every other finalist by more than the margin with "
                               f"probability >= {DECISION_THRESHOLD}.")
    if "undecided" not in verdicts.values():
        group = [best, *(f for f in ranked[1:] if verdicts[f.name] == "tie")]
        cheapest = min(group, key=FinalistRuns.cost_key)
        return Decision("practically equivalent", cheapest.name, best.name, comparisons, [f.name for f in group],
                        margin, detectable,
                        reason=f"{', '.join(f.name for f in group)} are within the margin of each other with "
                               f"probability >= {DECISION_THRESHOLD}; {cheapest.name} is the cheapest "
                               f"({cheapest.images_per_second:.0f} images/s at inference).")
    needed = _repeats_needed(best, [f for f in ranked[1:] if verdicts[f.name] == "undecided"], margin, rho)
    return Decision("undecided", best.name, best.name, comparisons, [best.name], margin, detectable, needed,
                    reason=f"{best.name} has the best mean, but the repeats cannot tell it from "
                           f"{', '.join(n for n, v in verdicts.items() if v == 'undecided')}.")


def _compare(best: FinalistRuns, other: FinalistRuns, margin: float, rho: float | None, seed: int) -> Comparison:
    if rho is not None:
        diffs = np.asarray(best.scores) - np.asarray(other.scores)
        probs = correlated_t_posterior(diffs, rho, margin)
        test = "correlated t-test"
    else:
        if best.correct is None or other.correct is None:
            raise ValueError("seed-only repeats need per-image correctness for the paired bootstrap")
        probs = bootstrap_posterior(best.correct, other.correct, margin, seed=seed)
        test = "paired bootstrap"
    mean = best.mean - other.mean
    return Comparison(other.name, mean, probs[3], probs[4], probs[0], probs[1], probs[2], test)


def _repeats_needed(best: FinalistRuns, undecided: list[FinalistRuns], margin: float, rho: float | None) -> int | None:
    """The smallest repeat count at which the same means and spreads would decide every undecided pair."""
    if rho is None:
        return None  # more seeds do not shrink the uncertainty of a fixed val set's images
    have = len(best.scores)
    for n in range(have + 1, _MAX_REPEATS + 1):
        if all(max(p[0], p[1]) >= DECISION_THRESHOLD for p in (
                correlated_t_posterior(np.asarray(best.scores) - np.asarray(o.scores), rho, margin, n)
                for o in undecided)):
            return n
    return None
