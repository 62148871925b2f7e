"""Recipe-space benchmark (issue 16): does searching the recipe pay for itself at a CPU budget?

Two arms, each a real ``autotransfer.search`` with the same time budget (``--timeout``, default 360 s,
the CLI's defaults otherwise: TPE, Hyperband, 3 epochs, confirmation of 3 finalists, both baselines):

* ``small``: ``search_spaces/small.yaml``'s four dimensions (three zoo backbones, freeze depth, head
  width, learning rate);
* ``recipe``: the same four, plus every recipe dimension of ``search_spaces/recipe.yaml`` (weight
  decay, LP-FT, layer-wise decay, L2-SP, drop path, label smoothing, warm-up, augmentation, mixup,
  CutMix), the input size choosing between the grid's resolution and three quarters of it.

Both arms see the dataset as ``benchmarks/grid.yaml`` splits it (train and val subsamples, the grid's
resolution: 128 px hymenoptera, 112 px flowers), for ``--seeds`` search seeds. Each recommended pick is
trained again on train with its trial's seed and scored once on every pool image outside its training
and selection data (train and val): 61 hymenoptera images, about 3,400 flowers images. The strong
baseline (AutoGluon's recipe, which every search runs) is scored the same way once per seed. The
paired difference between the arms' picks on the same images is tested per seed with the exact
McNemar test and summarised over seeds with a Student t interval.

Results go to ``benchmarks/recipe_space/runs.csv`` (one row per run, appended atomically: the
benchmark resumes) and ``results.md``. Study storages and feature caches go to ``--work`` (default
``/tmp/autotransfer-recipe-space``), so an interrupted search resumes there too.

    OMP_NUM_THREADS=2 python -m benchmarks.recipe_space                  # all (about 1.5 h on 2 CPU cores)
    OMP_NUM_THREADS=2 python -m benchmarks.recipe_space --part summary   # tables from runs.csv only
"""

from __future__ import annotations

import argparse
import io
import json
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from autotransfer.data.dataset import DIGITS, ImageDataset, load_dataset
from autotransfer.files import atomic_write_text

from .grid import FOLDERS, SHARED, Grid, grid_dataset

HERE = Path(__file__).resolve().parent
OUT = HERE / "recipe_space"
RUNS = OUT / "runs.csv"
SPACES = HERE.parent / "search_spaces"
ARMS = ("small", "recipe")
RECIPE_DIMENSIONS = ("weight_decay", "lp_ft", "layer_decay", "l2_sp", "drop_path", "label_smoothing", "warmup",
                     "augmentation", "mixup", "cutmix")


def arm_space(arm: str, resolution: int) -> dict[str, Any]:
    """The search space of ``arm`` at the grid's ``resolution`` (px)."""
    small = yaml.safe_load((SPACES / "small.yaml").read_text(encoding="utf-8"))
    space = {k: v for k, v in small.items() if k != "description"}
    if arm == "small":
        return {**space, "input_size": [resolution]}
    recipe = yaml.safe_load((SPACES / "recipe.yaml").read_text(encoding="utf-8"))
    lower = int(round(resolution * 0.75 / 16) * 16)
    return {**space, **{k: recipe[k] for k in RECIPE_DIMENSIONS}, "input_size": [lower, resolution]}


def outside_dataset(name: str, grid: Grid) -> ImageDataset:
    """The grid's split of ``name`` with ``test`` = every pool image outside its train and val."""
    base = grid_dataset(name, grid)
    full = load_dataset(SHARED / "data" / FOLDERS[name], seed=grid.seed)
    used = {key for split in ("train", "val") for key, _ in base.splits[split]}
    pool = sorted({item for items in full.splits.values() for item in items if item[0] not in used})
    return replace(base, splits={"train": base.splits["train"], "val": base.splits["val"], "test": pool})


def train_and_score(params: dict[str, Any], seed: int, dataset: ImageDataset, epochs: int, batch_size: int,
                    zoo: Any, runtime: Any) -> dict[str, Any]:
    """Train ``params`` on train with ``seed`` (as its trial did) and score it once on ``test``."""
    import torch

    from autotransfer import Budget
    from autotransfer.models.network import BackboneWithHead
    from autotransfer.models.zoo import create_backbone
    from autotransfer.space.strategy import Strategy
    from autotransfer.training.trainer import evaluate_split, fit, seed_everything

    tick = time.perf_counter()
    strategy = Strategy.from_params(params)
    recipe = strategy.recipe()
    seed_everything(seed)
    backbone, config = create_backbone(strategy.backbone, zoo, model_kwargs=recipe.model_kwargs)
    config = recipe.data_config(config)
    net = BackboneWithHead.build(backbone, strategy.freeze_depth, strategy.head_width, dataset.n_classes)
    training = replace(dataset, splits={"train": dataset.splits["train"], "val": [], "test": []})
    device = torch.device("cpu")
    fit(net, training, config, Budget(epochs=epochs, batch_size=batch_size), strategy.learning_rate, seed=seed,
        device=device, hflip=dataset.root != DIGITS, runtime=runtime, validate=False, recipe=recipe)
    metrics, predictions = evaluate_split(net, dataset, config, "test", batch_size=64, device=device,
                                          runtime=runtime)
    labels = [y for _, y in dataset.splits["test"]]
    correct = "".join("1" if p == y else "0" for p, y in zip(predictions, labels, strict=True))
    return {"outside_accuracy": metrics["accuracy"], "outside_n": len(labels), "correct": correct,
            "score_seconds": time.perf_counter() - tick}


def run_arm(name: str, seed: int, arm: str, args: argparse.Namespace, grid: Grid) -> dict[str, Any]:
    """One search of ``arm`` with ``seed`` and the scoring of its recommended pick: one row."""
    from autotransfer import search
    from autotransfer.models.zoo import load_zoo
    from autotransfer.storage.records import StudyAttr, recommended_trial
    from autotransfer.study.objective import trial_seed
    from autotransfer.training.runtime import Runtime

    dataset = outside_dataset(name, grid)
    searched = replace(dataset, splits={**dataset.splits, "test": []})  # the outside images stay unseen
    zoo = load_zoo(SHARED / "data" / "weights" / "zoo.yaml")
    work = Path(args.work) / f"{name}-{arm}-{seed}"
    runtime = Runtime(cache_dir=Path(args.work) / "cache")
    tick = time.perf_counter()
    result = search(searched, space=arm_space(arm, grid.datasets[name]["resolution"]), timeout=args.timeout,
                    n_trials=500, seed=seed, device="cpu", out=work, zoo=zoo, runtime=runtime)
    wall = time.perf_counter() - tick
    study = result.study
    best = recommended_trial(study)
    assert best is not None and best.value is not None, f"{name} {arm} seed {seed}: no complete trial"
    params = dict(best.params)
    trials = study.get_trials(deepcopy=False)
    strong = study.user_attrs.get(StudyAttr.STRONG_BASELINE) or {}
    decision = result.decision or {}
    row = {"dataset": name, "seed": seed, "arm": arm, "trials": len(trials),
           "complete": sum(t.state.name == "COMPLETE" for t in trials),
           "search_seconds": sum(float(t.user_attrs.get("seconds", 0.0)) for t in trials), "wall_seconds": wall,
           "pick_trial": best.number, "pick_val": float(best.value), "pick_params": json.dumps(params),
           "outcome": decision.get("outcome", ""), "strong_val": (strong.get("search") or {}).get("value"),
           "strong_seconds": (strong.get("search") or {}).get("seconds")}
    budget = result.study.user_attrs["autotransfer.config"]["budget"]
    row.update(train_and_score(params, trial_seed(seed, best.number), dataset, int(budget["epochs"]),
                               int(budget["batch_size"]), zoo, runtime))
    if strong.get("params") and arm == ARMS[0]:  # once per seed: the same recipe and seed in both arms
        scored = train_and_score(strong["params"], trial_seed(seed, 0), dataset, int(budget["epochs"]),
                                 int(budget["batch_size"]), zoo, runtime)
        row.update({f"strong_{k}": v for k, v in scored.items()})
    return row


def read_runs(path: Path = RUNS) -> pd.DataFrame:
    """The recorded runs (empty before the first)."""
    return pd.read_csv(path, dtype={"correct": str, "strong_correct": str}) if path.exists() else pd.DataFrame()


def record(names: list[str], args: argparse.Namespace, grid: Grid) -> None:
    """Run every (dataset, seed, arm) not yet in ``runs.csv``, appending each row atomically."""
    out = Path(args.out)
    for name in names:
        for seed in range(args.seeds):
            for arm in ARMS:
                table = read_runs(out / RUNS.name)
                if not table.empty and ((table["dataset"] == name) & (table["seed"] == seed)
                                        & (table["arm"] == arm)).any():
                    continue
                row = run_arm(name, seed, arm, args, grid)
                table = pd.concat([table, pd.DataFrame([row])], ignore_index=True)
                buffer = io.StringIO()
                table.to_csv(buffer, index=False, float_format="%.6g")
                out.mkdir(parents=True, exist_ok=True)
                atomic_write_text(out / RUNS.name, buffer.getvalue())
                print(f"{name} seed {seed} {arm}: {row['trials']} trials, pick trial {row['pick_trial']} val "
                      f"{row['pick_val']:.4f}, outside {row['outside_accuracy']:.4f} on {row['outside_n']} images "
                      f"({row['wall_seconds']:.0f} s)", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="flowers,hymenoptera")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=360.0, help="seconds of each search (--timeout)")
    parser.add_argument("--work", default="/tmp/autotransfer-recipe-space")
    parser.add_argument("--out", default=str(OUT), help="folder of runs.csv and the tables")
    parser.add_argument("--part", choices=("all", "summary"), default="all")
    args = parser.parse_args(argv)
    grid = Grid.load()
    if args.part == "all":
        record(args.datasets.split(","), args, grid)
    from .recipe_space_tables import write_tables

    write_tables(read_runs(Path(args.out) / RUNS.name), Path(args.out))


if __name__ == "__main__":
    main()
