"""Benchmark: the trainer's images/s against a bare hand-written PyTorch loop, side by side.

Both train the same full fine-tuning model (timm, channels-last) on the same real images
(hymenoptera train, timm's random resized crop and flip, decoded once into memory), with the same
batch, optimiser (AdamW) and one forward/backward pass per batch (``micro_batch`` = batch), then
evaluate on val with the eval preprocessing. The bare loop is what a user writes by hand; the
trainer adds its per-batch stop checks, schedule, divergence check, metrics and prefetching
loader. The runs alternate (bare, trainer, trainer, bare, ...) so the machine's drift hits both;
the best of the repeats is compared (as ``timeit`` does: slower runs measure the machine's other
load). Target (issue 5): trainer/bare >= 0.95. Run by hand::

    python -m benchmarks.trainer_throughput [--backbones A,B] [--repeats 2] [--device cpu]

and record the printed table in ``benchmarks/README.md`` with the machine.
"""

from __future__ import annotations

import argparse
import platform
import time
from pathlib import Path
from typing import Any

import timm.optim
import torch
import torch.nn.functional as F

from autotransfer import BackboneWithHead, Budget, fit, load_dataset, load_zoo
from autotransfer.models.zoo import create_backbone
from autotransfer.training.pipeline import Preprocess, UintImages, split_images, tensor_loader
from autotransfer.training.runtime import Runtime

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def _net(name: str, zoo: Any, n_classes: int) -> tuple[BackboneWithHead, dict[str, Any]]:
    torch.manual_seed(0)
    backbone, config = create_backbone(name, zoo)
    return BackboneWithHead.build(backbone, 0.0, 0, n_classes), config


def timm_normalise(x: torch.Tensor, preprocess: Preprocess) -> torch.Tensor:
    """Normalise uint8 images ``(B, 3, H, W)`` by hand, as ``timm.data.PrefetchLoader`` does."""
    mean = torch.tensor([m * 255 for m in preprocess.mean], device=x.device).view(1, -1, 1, 1)
    std = torch.tensor([s * 255 for s in preprocess.std], device=x.device).view(1, -1, 1, 1)
    return x.float().sub_(mean).div_(std)


def bare_loop(name: str, zoo: Any, dataset: Any, batch: int, device: torch.device,
              epochs: int) -> tuple[float, float]:
    """Hand-written epochs, each followed by a val pass; returns (train images/s, eval images/s)."""
    net, config = _net(name, zoo, dataset.n_classes)
    net = net.to(device).to(memory_format=torch.channels_last)
    preprocess = Preprocess.from_config(config)
    runtime = Runtime()
    train = tensor_loader(UintImages(dataset, "train", preprocess.train, runtime.memory()), batch, shuffle=True,
                          seed=0, device=device)
    val = tensor_loader(split_images(dataset, "val", preprocess, runtime, augment=False), batch, shuffle=False,
                        seed=0, device=device)
    optimizer = timm.optim.create_optimizer_v2(net, opt="adamw", lr=1e-4, weight_decay=0.01)
    train_seconds = eval_seconds = 0.0
    for _ in range(epochs):
        net.train()
        start = time.perf_counter()
        for x, y in train:
            x = timm_normalise(x.to(device), preprocess).contiguous(memory_format=torch.channels_last)
            loss = F.cross_entropy(net(x), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        _sync(device)
        train_seconds += time.perf_counter() - start
        net.eval()
        start = time.perf_counter()
        with torch.inference_mode():
            for x, _ in val:
                net(timm_normalise(x.to(device), preprocess).contiguous(memory_format=torch.channels_last)).argmax(1)
        _sync(device)
        eval_seconds += time.perf_counter() - start
    return (epochs * len(dataset.splits["train"]) / train_seconds,
            epochs * len(dataset.splits["val"]) / eval_seconds)


def trainer(name: str, zoo: Any, dataset: Any, batch: int, device: torch.device, epochs: int) -> tuple[float, float]:
    """:func:`autotransfer.fit` for ``epochs``; returns (train images/s, eval images/s)."""
    net, config = _net(name, zoo, dataset.n_classes)
    result = fit(net, dataset, config, Budget(epochs=epochs, batch_size=batch), 1e-4, seed=0, device=device,
                 runtime=Runtime(micro_batch=batch))
    return (epochs * len(dataset.splits["train"]) / result.train_seconds,
            epochs * len(dataset.splits["val"]) / result.eval_seconds)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbones", default="tf_mobilenetv3_small_100.tf1_in1k,mobilenetv2_100.tf2_in1k")
    parser.add_argument("--data", default=str(SHARED / "datasets" / "hymenoptera_data"))
    parser.add_argument("--zoo", default=str(SHARED / "weights" / "zoo.yaml"))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    device = torch.device(args.device)
    dataset = load_dataset(args.data)
    zoo = load_zoo(args.zoo)
    print(f"{platform.machine()} {platform.processor() or ''} threads={torch.get_num_threads()} "
          f"device={device} torch {torch.__version__} batch={args.batch} epochs={args.epochs} repeats={args.repeats}")
    print("| backbone | bare train img/s | trainer train img/s | ratio | bare eval img/s | trainer eval img/s "
          "| ratio |\n|---|---:|---:|---:|---:|---:|---:|")
    for name in args.backbones.split(","):
        bare_loop(name, zoo, dataset, args.batch, device, 1)  # warm-up: decodes the images once into memory
        runs: dict[str, list[tuple[float, float]]] = {"bare": [], "trainer": []}
        for repeat in range(args.repeats):  # the order alternates too, so neither always runs second
            order = ("bare", "trainer") if repeat % 2 == 0 else ("trainer", "bare")
            for which in order:
                runs[which].append((bare_loop if which == "bare" else trainer)(name, zoo, dataset, args.batch,
                                                                               device, args.epochs))
        # best of N, as timeit does: on a shared machine, slower runs measure other tenants' load
        med = {k: [max(r[i] for r in v) for i in (0, 1)] for k, v in runs.items()}
        print(f"| {name} | {med['bare'][0]:.1f} | {med['trainer'][0]:.1f} | {med['trainer'][0] / med['bare'][0]:.3f} "
              f"| {med['bare'][1]:.1f} | {med['trainer'][1]:.1f} | {med['trainer'][1] / med['bare'][1]:.3f} |")


if __name__ == "__main__":
    main()
