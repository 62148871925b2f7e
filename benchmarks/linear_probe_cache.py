"""Benchmark: one linear-probe trial with and without the frozen-feature cache.

A linear probe of ``mobilenetv2_100`` (real zoo weights) on hymenoptera, 3 epochs, batch 32, the
same seed each time, timed as the objective runs it (weights loaded, head built, trained and
validated every epoch):

* uncached: ``Runtime(cache=False)``, every epoch runs the backbone over every image;
* first trial with the cache: computes the features (and writes them to the cache folder);
* a later trial, new process: the memory cache is empty, features are read from the disk file;
* a later trial, same process: features from memory.

Target (issue 5): a cached trial at least 10 times faster at equal accuracy. Run by hand::

    python -m benchmarks.linear_probe_cache [--backbone NAME] [--repeats 3]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from autotransfer import BackboneWithHead, Budget, fit, load_dataset, load_zoo
from autotransfer.models.zoo import create_backbone
from autotransfer.training.cache import memory_cache
from autotransfer.training.runtime import Runtime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def trial(name: str, zoo: Any, dataset: Any, runtime: Runtime, device: torch.device) -> tuple[float, float, str]:
    """(seconds, val accuracy, inputs) of one linear-probe trial."""
    start = time.perf_counter()
    torch.manual_seed(0)
    backbone, config = create_backbone(name, zoo)
    net = BackboneWithHead.build(backbone, 1.0, 0, dataset.n_classes)
    result = fit(net, dataset, config, Budget(epochs=3, batch_size=32), 1e-3, seed=0, device=device, runtime=runtime)
    return time.perf_counter() - start, result.metrics["accuracy"], result.inputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="mobilenetv2_100.tf2_in1k")
    parser.add_argument("--data", default=str(SHARED / "datasets" / "hymenoptera_data"))
    parser.add_argument("--zoo", default=str(SHARED / "weights" / "zoo.yaml"))
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = load_dataset(args.data)
    zoo = load_zoo(args.zoo)
    print(f"{platform.machine()} threads={torch.get_num_threads()} device={device} torch {torch.__version__} "
          f"backbone={args.backbone} train={len(dataset.splits['train'])} val={len(dataset.splits['val'])} images")
    rows: dict[str, list[tuple[float, float, str]]] = {}
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            memory_cache(0).clear()
            rows.setdefault("uncached", []).append(trial(args.backbone, zoo, dataset, Runtime(cache=False), device))
            cached = Runtime(cache_dir=Path(tmp))
            memory_cache(0).clear()  # a cold start: images are decoded again too
            rows.setdefault("cached, first trial (extracts)", []).append(trial(args.backbone, zoo, dataset, cached,
                                                                               device))
            memory_cache(0).clear()
            rows.setdefault("cached, new process (disk)", []).append(trial(args.backbone, zoo, dataset, cached,
                                                                           device))
            rows.setdefault("cached, same process (memory)", []).append(trial(args.backbone, zoo, dataset, cached,
                                                                              device))
    base = statistics.median(s for s, _, _ in rows["uncached"])
    print("| trial | inputs | seconds (median) | speed-up | val accuracy |\n|---|---|---:|---:|---:|")
    for label, runs in rows.items():
        seconds = statistics.median(s for s, _, _ in runs)
        accuracy = {round(a, 4) for _, a, _ in runs}
        print(f"| {label} | {runs[0][2]} | {seconds:.2f} | {base / seconds:.1f}x | "
              f"{', '.join(f'{a:.4f}' for a in sorted(accuracy))} |")


if __name__ == "__main__":
    main()
