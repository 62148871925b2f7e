"""Record the search-quality grid: train every strategy of ``grid.yaml`` on each dataset.

    python -m benchmarks.record_grid [--datasets hymenoptera,flowers,digits] [--limit N]

Each strategy trains for the grid's epochs with :func:`autotransfer.fit`, the trainer a search
uses (same recipe, caches and CPU settings), at the dataset's grid resolution. After every epoch
the val and test predictions are scored, and one row per strategy and epoch is appended to
``benchmarks/search_quality/grid.csv``: the metrics, ``train_seconds`` and ``eval_seconds`` of that
epoch (the val pass only; test is scored in the same pass and its share of the time is removed by
image count) and, on epoch 1, ``setup_seconds`` (building the network and preparing its inputs:
the first strategy of a backbone and depth extracts the cached features or frozen-prefix
activations, the others find them in memory, as trials of one search do).

Recording resumes: strategies already in the table are skipped, and the table is rewritten
atomically after every strategy, so an interrupted run loses at most the strategy in progress.
A strategy whose loss diverges gets one row with ``status`` ``diverged`` at the epoch it failed.
"""

from __future__ import annotations

import argparse
import io
import re
import time
from dataclasses import replace
from typing import Any

import numpy as np
import pandas as pd
import torch

from autotransfer.data.dataset import DIGITS, ImageDataset
from autotransfer.errors import TrialFailed
from autotransfer.files import atomic_write_text
from autotransfer.models.network import BackboneWithHead
from autotransfer.models.zoo import Zoo, create_backbone, load_zoo
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import Budget, classification_metrics, fit, seed_everything

from .grid import DATASETS, KEY, METRICS, SHARED, TABLE, Grid, grid_dataset, read_table


def record_strategy(dataset: ImageDataset, strategy: tuple[str, float, int, float], grid: Grid, zoo: Zoo,
                    runtime: Runtime, resolution: int) -> list[dict[str, Any]]:
    """Train one strategy on ``dataset`` and return one row per epoch (see the module docstring)."""
    backbone_name, depth, head, lr = strategy
    n_val, n_test = len(dataset.splits["val"]), len(dataset.splits["test"])
    # val and test are scored in one pass: the trainer's val split is val followed by test
    scored = replace(dataset, splits={"train": dataset.splits["train"],
                                      "val": dataset.splits["val"] + dataset.splits["test"]})
    y_true = np.array([y for _, y in scored.splits["val"]])
    base = dict(zip(KEY, (dataset.name, backbone_name, depth, head, lr), strict=True))
    base.update(resolution=resolution, n_train=len(dataset.splits["train"]), n_val=n_val, n_test=n_test,
                seed=grid.seed)
    tick = time.perf_counter()
    seed_everything(grid.seed)
    backbone, data_config = create_backbone(backbone_name, zoo)
    data_config = {**data_config, "input_size": (3, resolution, resolution)}
    net = BackboneWithHead.build(backbone, depth, head, dataset.n_classes)
    build = time.perf_counter() - tick
    try:
        result = fit(net, scored, data_config, Budget(epochs=grid.epochs, batch_size=grid.batch_size), lr,
                     seed=grid.seed, device=torch.device("cpu"), hflip=dataset.root != DIGITS, runtime=runtime)
    except TrialFailed as err:
        failed_at = re.search(r"epoch (\d+)", err.reason)  # "diverged: loss is nan at epoch E step S"
        return [{**base, "epoch": int(failed_at.group(1)) if failed_at else grid.epochs, "status": "diverged",
                 "inputs": "", "setup_seconds": build, "train_seconds": time.perf_counter() - tick - build,
                 "eval_seconds": 0.0, "train_loss": float("nan")}]
    setup = build + result.seconds - result.train_seconds - result.eval_seconds
    rows = []
    for epoch, pred in enumerate(result.epoch_predictions, start=1):
        p = np.array(pred)
        row = {**base, "epoch": epoch, "status": "completed", "inputs": result.inputs,
               "setup_seconds": setup if epoch == 1 else 0.0,
               "train_seconds": result.epoch_train_seconds[epoch - 1],
               "eval_seconds": result.epoch_eval_seconds[epoch - 1] * n_val / (n_val + n_test),
               "train_loss": result.train_loss[epoch - 1]}
        for split, part in (("val", slice(0, n_val)), ("test", slice(n_val, None))):
            metrics = classification_metrics(y_true[part], p[part], float("nan"))
            row.update({f"{split}_{m}": metrics[m] for m in METRICS})
        rows.append(row)
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default=",".join(DATASETS))
    parser.add_argument("--limit", type=int, default=None, help="record at most N new strategies per dataset")
    args = parser.parse_args(argv)
    grid = Grid.load()
    zoo = load_zoo(SHARED / "data" / "weights" / "zoo.yaml")
    table = read_table()
    for name in args.datasets.split(","):
        dataset = grid_dataset(name, grid)
        resolution = grid.datasets[name]["resolution"]
        runtime = Runtime(cache_mb=4096)  # one process-wide cache per dataset, as in one search
        done = set() if table.empty else set(map(tuple, table.loc[table["dataset"] == name, KEY[1:]].values))
        todo = [s for s in grid.strategies() if s not in done][: args.limit]
        print(f"{name}: {dataset.counts()} at {resolution} px, {len(todo)} strategies to record", flush=True)
        for i, strategy in enumerate(todo, start=1):
            tick = time.perf_counter()
            rows = record_strategy(dataset, strategy, grid, zoo, runtime, resolution)
            table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
            buffer = io.StringIO()
            table.to_csv(buffer, index=False, float_format="%.6g")
            atomic_write_text(TABLE, buffer.getvalue())
            last = rows[-1]
            print(f"  [{i}/{len(todo)}] {strategy} {last['status']} val {last.get('val_accuracy', float('nan')):.4f}"
                  f" in {time.perf_counter() - tick:.1f} s ({last['inputs']})", flush=True)
        runtime.memory().clear()  # free the dataset's cached tensors before the next one


if __name__ == "__main__":
    main()
