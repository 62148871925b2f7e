"""The ``autotransfer refit`` and ``autotransfer predict`` commands.

They load PyTorch, which ``autotransfer report`` and ``status`` never import, so they live apart from
:mod:`autotransfer.cli.main`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from autotransfer.data.dataset import IMAGE_EXTENSIONS, decode_error
from autotransfer.deploy.model import load_model
from autotransfer.errors import DataError, describe
from autotransfer.files import atomic_write_text
from autotransfer.results.report import write_report
from autotransfer.results.status import describe_params
from autotransfer.storage.backends import load_existing_study
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.study.refit import refit
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import resolve_device

__all__ = ["image_files", "predict_command", "predictions_table", "refit_command"]


def refit_command(args: argparse.Namespace, runtime_options: dict[str, Any]) -> int:
    """``autotransfer refit``: refit, save the model, refresh the report beside the storage; exit status 0.

    Args:
        args: The parsed command line.
        runtime_options: The runtime flags as :class:`~autotransfer.training.pipeline.Runtime` fields; the
            feature cache is the search's (``OUT/cache`` beside a SQLite or journal storage).
    """
    study = load_existing_study(args.storage, args.study_name)
    folder = OutputFolder.of_storage(args.storage)
    runtime = Runtime(**runtime_options)
    if folder is not None and runtime.cache:
        runtime = replace(runtime, cache_dir=folder.cache)
    model = refit(study, trial=args.trial, epochs=args.epochs, train_on=args.train_on, data=args.data, zoo=args.zoo,
                  device=args.device, runtime=runtime)
    model.save(args.out)
    info = model.training
    print(f"Refit trial {info['trial']} ({describe_params(model.strategy)}) on {info['train_on']} "
          f"({info['n_images']} images) for {info['epochs']} epochs in {info['seconds']:.1f} s.")
    for split in ("test", "val"):
        if split in model.metrics:
            m = model.metrics[split]
            note = "" if split == "test" else " (no test split; val also chose the strategy, so this is optimistic)"
            print(f"{split.capitalize()}: accuracy {m['accuracy']:.4f}, balanced accuracy "
                  f"{m['balanced_accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f} on {m['n_images']} images{note}.")
    if "test" not in model.metrics and "val" not in model.metrics:
        print("No held-out images: trained on train+val of a dataset without a test split.")
    print(f"Saved the model to {args.out}")
    if folder is not None and folder.report.is_file():
        write_report(study, folder.report)
        print(f"Updated {folder.report} with the refit's figures.")
    return 0


def image_files(paths: list[str]) -> list[Path]:
    """The image files named by ``paths``: files as given, folders searched recursively (sorted).

    Raises:
        DataError: A path does not exist, a folder holds no image, or a file cannot be decoded
            (every such file is counted and some are named), before any prediction runs.
    """
    files: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")
                           and p.suffix.lower() in IMAGE_EXTENSIONS)
            if not found:
                raise DataError(f"The folder {str(path)!r} holds no image file ({', '.join(IMAGE_EXTENSIONS)}).")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(describe("image", "an existing image file or folder", raw))
    bad = [f"{path}: {reason}" for path in files if (reason := decode_error(path))]
    if bad:
        raise DataError(f"{len(bad)} file(s) cannot be decoded as images: " + "; ".join(bad[:5]))
    return files


def predictions_table(files: list[Path], labels: list[str], probabilities: list[list[float]],
                      classes: tuple[str, ...]) -> pd.DataFrame:
    """One row per image: ``image``, ``label``, then ``prob_<class>`` for every class."""
    table = pd.DataFrame({"image": [str(f) for f in files], "label": labels})
    probs = pd.DataFrame(probabilities, columns=[f"prob_{c}" for c in classes])
    return pd.concat([table, probs], axis=1)


def predict_command(args: argparse.Namespace) -> int:
    """``autotransfer predict``: write one CSV row per image; exit status 0."""
    model = load_model(args.model, device=resolve_device(args.device))
    files = image_files(args.images)
    probabilities = model.predict_proba(files, batch_size=args.batch_size)
    labels = [model.classes[k] for k in probabilities.argmax(axis=1)]
    table = predictions_table(files, labels, probabilities.tolist(), model.classes)
    atomic_write_text(args.out, table.to_csv(index=False))
    counts = table["label"].value_counts().reindex(list(model.classes), fill_value=0)
    print(f"Wrote {len(table)} predictions to {args.out}: " + ", ".join(f"{c} {n}" for c, n in counts.items()))
    return 0
