"""Decision quality (issue 15): does the confirmation stage pick a better strategy than the single best val trial?

    python -m benchmarks.decision_quality                        # plan, train (resumes), summarise
    python -m benchmarks.decision_quality --part plan            # the replays and plans alone: seconds
    python -m benchmarks.decision_quality --part summary         # the tables from the committed runs.csv

For each dataset of the search-quality grid (same resolutions and split sizes) and each of ``--seeds``
study seeds, a default search of 20 trials is replayed on the recorded grid (``benchmarks/replay.py``).
Three picks are compared:

- **today's pick**: the replayed study's best complete trial (Optuna's ``best_trial``);
- **the confirmed pick**: the product's confirmation plan is made from the replayed study by
  :func:`autotransfer.study.confirm.make_plan` itself (finalists, repeats fitted to half the search's
  compute, every repeat's seed and split derived from the study seed exactly as a search derives them);
  each finalist is then really trained on each repeat (``autotransfer.fit``, the grid's budget) and
  :func:`autotransfer.results.decision.decide` makes the decision; where the plan is skipped (too little
  budget), the confirmed pick is today's pick;
- **the compute control**: today's pick after the same replayed study runs more search trials until it
  has also spent the stage's planned compute;
- **explore, then confirm** (the ``hybrid`` arm): the replayed study first runs more search trials for
  ``HYBRID_EXPLORE`` (half) of the stage's budget, then the product's plan is made from the extended study
  within what is left of the budget and decided as above; where that plan is skipped (2 repeats of 2
  finalists do not fit), its pick is the extended study's best trial.

**The truth** is measured on the union of every seed's finalists and picks (of every arm) plus the textbook
recipe: each strategy is trained on ``--truth-draws`` other draws (seeds and stratified train draws of the
grid's train size from the dataset's whole pool, derived from a fixed entropy unrelated to the study seeds),
and each draw is scored on the pool images outside its training draw (at most ``--truth-cap`` of them, a
stratified subsample, to bound the CPU time on flowers). Regret, tie accuracy and outcome correctness use
only these truth draws; the stage's own runs decide nothing about the truth.

Every training run is appended to ``benchmarks/decision_quality/runs.csv`` as it finishes (atomically);
a rerun skips the runs already there, so an interrupted recording resumes. The tables are written to
``benchmarks/decision_quality/results.md`` (with ``summary.csv``, ``seeds.csv`` and ``regret.png``) by
:mod:`benchmarks.decision_quality_tables`.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import math
import time
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import optuna
import pandas as pd

from autotransfer.data.dataset import DIGITS, ImageDataset, Sample, stratified_split
from autotransfer.errors import TrialFailed
from autotransfer.files import atomic_write_text
from autotransfer.storage.records import TrialAttr, best_trial
from autotransfer.study.confirm import ConfirmPlan, extend_plan, make_plan
from autotransfer.study.sampling import make_pruner, make_sampler

from .decision_quality_tables import planned_runs, write_tables
from .grid import DATASETS, TABLE, Grid, _subsample, grid_dataset, read_table
from .replay import Clock, Key, Method, RecordedGrid, grid_space, replay_objective

OUT = TABLE.parent.parent / "decision_quality"
RUNS = OUT / "runs.csv"
N_TRIALS = 20  # the CLI's default --n-trials
FINALISTS = 3  # the CLI's default --finalists
MARGIN = 0.01  # the CLI's default --tie-margin
SHARE = 0.5  # the stage's default share of the search's compute
HYBRID_EXPLORE = 0.5  # the explore-then-confirm arm spends this share of the stage's budget on search trials
TRUTH_ENTROPY = 15_000  # seeds the truth draws; unrelated to the study seeds 0..19 and their derived seeds
DEFAULT = Method("default", "tpe", "hyperband", baseline=True)
RUN_KEY = ["dataset", "kind", "draw", "backbone", "freeze_depth", "head_width", "learning_rate"]


@dataclass(frozen=True)
class SeedPlan:
    """One replayed seed: its picks, its confirmation plan (or why there is none) and the compute spent.

    Attributes:
        seed: The study seed.
        today: Today's pick (the best of the 20 search trials).
        control: The compute control's pick (more search trials for the stage's compute).
        finalists: The plan's finalists, best search value first (empty without a plan).
        search_values: The finalists' search val accuracies, same order.
        plan: The product's confirmation plan, or None.
        note: The plan's note, or the reason it was skipped.
        search_seconds: Replayed compute of the 20 search trials (s).
        control_trials: Trials the replayed study ran in all, both arms' extra trials included.
        hybrid: The explore-then-confirm arm: more search trials for ``HYBRID_EXPLORE`` of the stage's
            budget, then the product's plan within the rest (:class:`Arm`).
    """

    seed: int
    today: Key
    control: Key
    finalists: tuple[Key, ...]
    search_values: tuple[float, ...]
    plan: ConfirmPlan | None
    note: str
    search_seconds: float
    control_trials: int
    hybrid: Arm | None = None


@dataclass(frozen=True)
class Arm:
    """The explore-then-confirm arm of one seed.

    Attributes:
        today: The best search trial after the extra trials (the arm's pick where its plan is skipped).
        finalists: Its plan's finalists, best search value first (empty without a plan).
        plan: The product's plan made from the extended study within the rest of the budget, or None.
        note: The plan's note, or why it was skipped.
        explore_seconds: Replayed compute of the extra search trials (s).
    """

    today: Key
    finalists: tuple[Key, ...]
    plan: ConfirmPlan | None
    note: str
    explore_seconds: float


def _timed_objective(grid: RecordedGrid, clock: Clock) -> Any:
    """The replay objective, also storing each trial's seconds as a search trial does (the plan reads them)."""
    inner = replay_objective(grid, grid_space(Grid.load()), clock)

    def objective(trial: optuna.Trial) -> float:
        start = clock.seconds
        try:
            return inner(trial)
        finally:
            trial.set_user_attr(TrialAttr.SECONDS, clock.seconds - start)

    return objective


def plan_seed(grid: RecordedGrid, dataset: ImageDataset, seed: int) -> SeedPlan:
    """Replay a 20-trial default search with ``seed``, make its plan, and run its compute control."""
    space = grid_space(Grid.load())
    study = optuna.create_study(study_name=f"replay-{grid.dataset}-{DEFAULT.name}-{seed}", direction="maximize",
                                sampler=make_sampler(seed), pruner=make_pruner("hyperband", grid.epochs))
    study.enqueue_trial(space.baseline().as_dict(), user_attrs={"baseline": True})
    clock = Clock(grid)
    objective = _timed_objective(grid, clock)
    study.optimize(objective, n_trials=N_TRIALS, catch=(TrialFailed,))
    search_seconds = clock.seconds
    keys = {int(row["trial"]): (row["backbone"], row["freeze_depth"], row["head_width"], row["learning_rate"])
            for row in clock.trace}
    best = best_trial(study)
    assert best is not None, "a 20-trial replay always completes its baseline trial"
    today = keys[best.number]
    plan, note = make_plan(study, dataset, finalists=FINALISTS, repeats=None, margin=MARGIN, resplit=False,
                           seed=seed, budget_seconds=SHARE * search_seconds)
    finalists = tuple(keys[int(f["trial"])] for f in plan.finalists) if plan else ()
    values = tuple(float(study.trials[int(f["trial"])].value or 0.0) for f in plan.finalists) if plan else ()
    budget = SHARE * search_seconds
    control_target = search_seconds + (plan.cost() if plan else 0.0)
    hybrid_target = search_seconds + HYBRID_EXPLORE * budget
    hybrid: Arm | None = None
    control = today
    # One replayed study continues to both targets in turn: the trials it runs do not depend on where it pauses.
    for target in sorted({control_target, hybrid_target}):
        _continue(study, objective, clock, target)
        keys = {int(row["trial"]): (row["backbone"], row["freeze_depth"], row["head_width"], row["learning_rate"])
                for row in clock.trace}
        now = best_trial(study)
        if target == control_target and plan:
            control = today if now is None else keys[now.number]
        if target == hybrid_target:
            made, why = make_plan(study, dataset, finalists=FINALISTS, repeats=None, margin=MARGIN, resplit=False,
                                  seed=seed, budget_seconds=budget - (clock.seconds - search_seconds))
            hybrid = Arm(today if now is None else keys[now.number],
                         tuple(keys[int(f["trial"])] for f in made.finalists) if made else (), made, why,
                         clock.seconds - search_seconds)
    return SeedPlan(seed, today, control, finalists, values, plan, note, search_seconds, len(study.trials), hybrid)


def _continue(study: optuna.Study, objective: Any, clock: Clock, target: float) -> None:
    """Run more replayed search trials until ``clock`` has spent ``target`` seconds."""
    def stop(study: optuna.Study, _: optuna.trial.FrozenTrial) -> None:
        if clock.seconds >= target:
            study.stop()

    if clock.seconds < target:
        study.optimize(objective, n_trials=1000, callbacks=[stop], catch=(TrialFailed,))


def textbook_key(grid: RecordedGrid) -> Key:
    """The textbook recipe of the grid's space (frozen first backbone, Dense(1024), lr 1e-4)."""
    return grid.key(grid_space(Grid.load()).baseline())


def pool_dataset(name: str, grid: Grid) -> ImageDataset:
    """Every image of the dataset (the truth draws' pool), as one ``train`` split."""
    base = grid_dataset(name, grid)
    from autotransfer.data.dataset import load_dataset

    from .grid import FOLDERS, SHARED
    full = load_dataset("digits", seed=grid.seed) if name == "digits" else load_dataset(
        SHARED / "data" / FOLDERS[name], seed=grid.seed)
    pool = sorted({s for items in full.splits.values() for s in items})
    return replace(base, splits={"train": pool})


def truth_split(pool: list[Sample], n_classes: int, n_train: int, draw: int, cap: int) -> tuple[
        int, dict[str, list[Sample]]]:
    """Truth draw ``draw``: its training seed and ``{"train": n_train images, "val": the scored rest}``."""
    seed = int(np.random.SeedSequence([TRUTH_ENTROPY, draw]).generate_state(1)[0])
    parts = stratified_split(pool, n_classes, seed % 2**32, 1 - n_train / len(pool), 0.0)
    return seed, {"train": parts["train"], "val": _subsample(parts["val"], cap, seed % 2**32)}


def split_digest(splits: dict[str, list[Sample]]) -> str:
    """A short hash of a split's keys, stored with each run so a changed derivation is caught on resume."""
    text = "|".join(f"{name}:" + ",".join(k for k, _ in splits[name]) for name in sorted(splits))
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _key_columns(key: Key) -> dict[str, Any]:
    return {"backbone": key[0], "freeze_depth": float(key[1]), "head_width": int(key[2]),
            "learning_rate": float(key[3])}


def train_run(dataset: ImageDataset, key: Key, seed: int, grid: Grid, context: dict[str, Any]) -> dict[str, Any]:
    """Train ``key`` on ``dataset``'s train split with ``seed``, score its val split once; one row."""
    import torch

    from autotransfer.models.network import BackboneWithHead
    from autotransfer.models.zoo import create_backbone
    from autotransfer.training.trainer import Budget, evaluate_split, fit, images_per_second, seed_everything

    tick = time.perf_counter()
    seed_everything(seed % 2**32)
    backbone, data_config = create_backbone(key[0], context["zoo"])
    data_config = {**data_config, "input_size": (3, context["resolution"], context["resolution"])}
    net = BackboneWithHead.build(backbone, key[1], key[2], dataset.n_classes)
    device, runtime = torch.device("cpu"), context["runtime"]
    row: dict[str, Any] = {"n_train": len(dataset.splits["train"]), "n_scored": len(dataset.splits["val"]),
                           "trainable_params": sum(p.numel() for p in net.parameters() if p.requires_grad)}
    try:
        result = fit(net, dataset, data_config, Budget(epochs=grid.epochs, batch_size=grid.batch_size), key[3],
                     seed=seed % 2**32, device=device, hflip=dataset.root != DIGITS, runtime=runtime, validate=False)
    except TrialFailed as err:
        return {**row, "status": "diverged", "accuracy": math.nan, "correct": "", "images_per_second": math.nan,
                "train_seconds": time.perf_counter() - tick, "note": err.reason}
    metrics, predictions = evaluate_split(net, dataset, data_config, "val", batch_size=128, device=device,
                                          runtime=runtime)
    labels = [y for _, y in dataset.splits["val"]]
    correct = "".join("1" if p == y else "0" for p, y in zip(predictions, labels, strict=True))
    ips = images_per_second(net, dataset, data_config, device=device, runtime=runtime)
    return {**row, "status": "completed", "accuracy": metrics["accuracy"], "correct": correct,
            "images_per_second": ips, "train_seconds": result.seconds, "inputs": result.inputs, "note": ""}


def jobs(name: str, plans: list[SeedPlan], grid: Grid, truth_draws: int, cap: int, textbook: Key) -> list[
        tuple[dict[str, Any], ImageDataset, int]]:
    """Every training run of one dataset: ``(identity, dataset, seed)``; stage runs first, then the truth."""
    base = grid_dataset(name, grid)
    out: list[tuple[dict[str, Any], ImageDataset, int]] = []
    seen: set[tuple[str, Key]] = set()
    for p in plans:
        arms = [(p.plan, p.finalists)] + ([(p.hybrid.plan, p.hybrid.finalists)] if p.hybrid else [])
        for plan, finalists in arms:
            if plan is None:
                continue
            for r, seed in enumerate(plan.seeds):
                data = plan.dataset(base, r)
                data = replace(data, splits={"train": data.splits["train"], "val": data.splits["val"]})
                for key in finalists:
                    if (f"{p.seed}/{r}", key) in seen:
                        continue  # the two arms share seeds and splits: one run serves both
                    seen.add((f"{p.seed}/{r}", key))
                    out.append(({"dataset": name, "kind": "stage", "draw": f"{p.seed}/{r}", **_key_columns(key),
                                 "digest": split_digest(data.splits)}, data, seed))
    union = sorted({k for p in plans for k in (p.today, p.control, *p.finalists)}
                   | {k for p in plans if p.hybrid for k in (p.hybrid.today, *p.hybrid.finalists)} | {textbook})
    pool = pool_dataset(name, grid)
    n_train = grid.datasets[name]["train"]
    for d in range(truth_draws):
        seed, splits = truth_split(pool.splits["train"], pool.n_classes, n_train, d, cap)
        data = replace(pool, splits=splits)
        for key in union:
            out.append(({"dataset": name, "kind": "truth", "draw": str(d), **_key_columns(key),
                         "digest": split_digest(splits)}, data, seed))
    return out


def read_runs() -> pd.DataFrame:
    """The recorded runs (empty before the first)."""
    return pd.read_csv(RUNS, dtype={"draw": str, "correct": str}) if RUNS.exists() else pd.DataFrame()


def record(name: str, todo: list[tuple[dict[str, Any], ImageDataset, int]], grid: Grid) -> None:
    """Train every run of ``todo`` not yet in ``runs.csv``, appending each row atomically."""
    from autotransfer.models.zoo import load_zoo
    from autotransfer.training.runtime import Runtime

    from .grid import SHARED

    table = read_runs()
    done: set[tuple[Any, ...]] = set()
    if not table.empty:
        done = set(map(tuple, table[[*RUN_KEY, "digest"]].astype(str).values))
    left = [job for job in todo if tuple(str(job[0][c]) for c in [*RUN_KEY, "digest"]) not in done]
    # Group by backbone and depth so that the cached features and frozen-prefix activations are reused.
    left.sort(key=lambda job: (job[0]["kind"] != "stage", job[0]["backbone"], job[0]["freeze_depth"]))
    runtime = Runtime(cache_mb=6144)
    context = {"zoo": load_zoo(SHARED / "data" / "weights" / "zoo.yaml"), "runtime": runtime,
               "resolution": grid.datasets[name]["resolution"]}
    print(f"{name}: {len(todo)} runs, {len(left)} to train", flush=True)
    for i, (identity, data, seed) in enumerate(left, start=1):
        row = {**identity, **train_run(data, (identity["backbone"], identity["freeze_depth"],
                                              identity["head_width"], identity["learning_rate"]), seed, grid, context)}
        table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
        buffer = io.StringIO()
        table.to_csv(buffer, index=False, float_format="%.6g")
        atomic_write_text(RUNS, buffer.getvalue())
        print(f"  [{i}/{len(left)}] {identity['kind']} {identity['draw']} {identity['backbone']} "
              f"{identity['freeze_depth']} {identity['head_width']} {identity['learning_rate']:g}: "
              f"{row['accuracy']:.4f} in {row['train_seconds']:.1f} s", flush=True)
    runtime.memory().clear()


def all_plans(table: pd.DataFrame, name: str, grid: Grid, seeds: int) -> list[SeedPlan]:
    """Every seed's replay and plan for dataset ``name`` (deterministic: recomputed on every call)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    recorded = RecordedGrid(table, name)
    dataset = grid_dataset(name, grid)
    return [plan_seed(recorded, dataset, seed) for seed in range(seeds)]


def _measured(runs: pd.DataFrame, name: str, seed: int, plan: ConfirmPlan, finalists: tuple[Key, ...]) -> dict[
        int, list[float]] | None:
    """Recorded training seconds of each finalist's planned repeats on ``name``, or None while one is missing."""
    recorded = planned_runs(seed, plan, finalists, runs[runs["dataset"] == name]) if not runs.empty else None
    if recorded is None:
        return None
    return {k: [float(r["train_seconds"]) for r in recorded[key]] for k, key in enumerate(finalists)}


def extend(plans: list[SeedPlan], runs: pd.DataFrame, name: str, grid: Grid) -> list[SeedPlan]:
    """Each seed's plans lengthened as the product lengthens them (:func:`extend_plan`), from the recorded seconds.

    The product measures a run's whole trial seconds; the benchmark has each run's training seconds
    (``train_seconds``), which leave out scoring val, a second or less here.
    """
    base = grid_dataset(name, grid)
    out = []
    for p in plans:
        budget = SHARE * p.search_seconds
        plan = p.plan
        if plan is not None and (seconds := _measured(runs, name, p.seed, plan, p.finalists)) is not None:
            plan = extend_plan(plan, base, seconds, budget) or plan
        hybrid = p.hybrid
        if hybrid is not None and hybrid.plan is not None and (
                seconds := _measured(runs, name, p.seed, hybrid.plan, hybrid.finalists)) is not None:
            longer = extend_plan(hybrid.plan, base, seconds, budget - hybrid.explore_seconds)
            hybrid = replace(hybrid, plan=longer or hybrid.plan)
        out.append(replace(p, plan=plan, note=plan.note if plan else p.note, hybrid=hybrid))
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--truth-draws", type=int, default=9)
    parser.add_argument("--truth-cap", type=int, default=1500, help="most pool images a truth draw is scored on")
    parser.add_argument("--part", choices=("all", "plan", "summary"), default="all")
    args = parser.parse_args(argv)
    grid, table = Grid.load(), read_table()
    plans = {name: all_plans(table, name, grid, args.seeds) for name in args.datasets.split(",")}
    for name, seed_plans in plans.items():
        textbook = textbook_key(RecordedGrid(table, name))
        todo = jobs(name, seed_plans, grid, args.truth_draws, args.truth_cap, textbook)
        stage = sum(j[0]["kind"] == "stage" for j in todo)
        print(f"{name}: {sum(p.plan is not None for p in seed_plans)}/{len(seed_plans)} seeds planned, "
              f"{stage} stage runs, {len(todo) - stage} truth runs", flush=True)
        if args.part == "all":
            record(name, todo, grid)
        if args.part != "plan":  # the planned repeats' measured seconds decide how many more fit
            plans[name] = extend(seed_plans, read_runs(), name, grid)
            todo = jobs(name, plans[name], grid, args.truth_draws, args.truth_cap, textbook)
            print(f"{name}: {sum(j[0]['kind'] == 'stage' for j in todo) - stage} more stage runs after the "
                  "measured seconds", flush=True)
            if args.part == "all":
                record(name, todo, grid)
    if args.part != "plan":
        write_tables(plans, read_runs(), args.truth_draws)


if __name__ == "__main__":
    main()
