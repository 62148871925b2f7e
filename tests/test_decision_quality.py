"""The decision-quality benchmark's truth: its corrected intervals and classes on constructed draws."""

from __future__ import annotations

import numpy as np
import pandas as pd

from benchmarks.decision_quality_tables import Truth, contrasts

A, B, C = ("a", 1.0, 0, 0.001), ("b", 1.0, 0, 0.001), ("c", 1.0, 0, 0.001)


def _runs(scores: dict[tuple[str, float, int, float], list[float]], n_scored: int = 1000, n_train: int = 1000
          ) -> pd.DataFrame:
    rows = [{"kind": "truth", "status": "completed", "draw": str(d), "backbone": k[0], "freeze_depth": k[1],
             "head_width": k[2], "learning_rate": k[3], "accuracy": v, "n_scored": n_scored, "n_train": n_train}
            for k, values in scores.items() for d, v in enumerate(values)]
    return pd.DataFrame(rows)


def test_truth_classes_a_lead_a_tie_and_an_undecided_pair() -> None:
    rng = np.random.default_rng(0)
    base = 0.80 + rng.normal(0, 0.01, 9)
    truth = Truth(_runs({A: list(base + 0.05), B: list(base + 0.0005 * rng.standard_normal(9)),
                         C: list(base + rng.normal(0.01, 0.03, 9))}), 9)
    assert truth.best == A
    assert truth.verdict(A, B) == "lead"  # 5 points ahead on every draw
    assert truth.verdict(B, B) == "tie"
    tiny = Truth(_runs({A: list(base), B: list(base + 0.001 * np.sign(rng.standard_normal(9)))}, 100, 1000), 9)
    assert tiny.verdict(A, B) == "tie"  # differences of 0.1 point, well inside the 1-point margin
    assert truth.verdict(C, B) == "undecided"  # a 1-point mean difference with a 3-point spread


def test_the_interval_is_widened_by_the_nadeau_bengio_correction() -> None:
    values = {A: [0.9, 0.8, 0.85, 0.88], B: [0.8, 0.8, 0.8, 0.8]}
    plain = Truth(_runs(values, n_scored=0, n_train=100), 4)
    corrected = Truth(_runs(values, n_scored=100, n_train=100), 4)
    mean, low, high = plain.interval(A, B)
    assert abs(mean - 0.0575) < 1e-9
    diff = np.array([0.1, 0.0, 0.05, 0.08])
    half = 3.182446305284263 * np.sqrt(diff.var(ddof=1) / 4)  # t(0.975, 3) times the plain standard error
    assert abs((high - low) / 2 - half) < 1e-6
    _, c_low, c_high = corrected.interval(A, B)
    assert abs((c_high - c_low) / (high - low) - np.sqrt((1 / 4 + 1) / (1 / 4))) < 1e-6


def test_contrasts_resolve_a_rule_that_always_picks_the_better_strategy() -> None:
    rng = np.random.default_rng(1)
    base = 0.80 + rng.normal(0, 0.01, 9)
    truth = Truth(_runs({A: list(base + 0.05), B: list(base), C: list(base + rng.normal(0.01, 0.03, 9))}), 9)
    pick = {key: "/".join(str(v) for v in key) for key in (A, B, C)}
    seeds = pd.DataFrame([{"dataset": "d", "today_pick": pick[B], "confirmed_pick": pick[A], "control_pick": pick[B],
                           "hybrid_pick": pick[C if s % 2 else B]} for s in range(4)])
    table = contrasts(seeds, {"d": truth}).set_index(["rule", "against"])
    better = table.loc[("confirmed", "today's pick")]
    assert better["verdict"] == "better" and abs(better["mean_pt"] - 5.0) < 1e-6  # A leads B by 5 points on every draw
    same = table.loc[("compute control", "today's pick")]
    assert same["mean_pt"] == 0.0 and same["verdict"] == "not resolved"  # the same pick on every seed
    assert table.loc[("confirmed", "compute control")]["verdict"] == "better"
    assert table.loc[("explore, then confirm", "confirmed")]["verdict"] == "worse"
    assert table.loc[("explore, then confirm", "today's pick")]["verdict"] == "not resolved"  # C: 3-point spread
