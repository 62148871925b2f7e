"""The ``autotransfer refit`` and ``autotransfer predict`` commands.

They load PyTorch, which ``autotransfer report`` and ``status`` never import, so they live apart from
:mod:`autotransfer.cli.main`.
"""

from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from autotransfer.data.dataset import IMAGE_EXTENSIONS, decode_error
from autotransfer.deploy.model import load_model
from autotransfer.errors import DataError, describe
from autotransfer.files import atomic_write_text
from autotransfer.results.report import write_report
from autotransfer.results.status import describe_decision, describe_params
from autotransfer.settings import SearchSettings
from autotransfer.space.search_space import load_search_space
from autotransfer.space.strategy import Strategy
from autotransfer.storage.backends import load_existing_study
from autotransfer.storage.output_folder import OutputFolder
from autotransfer.storage.records import StudyAttr, read_budget, read_config
from autotransfer.study.confirm import run_confirmation
from autotransfer.study.objective import Objective
from autotransfer.study.refit import refit, resolve_zoo, stored_dataset
from autotransfer.study.strong_baseline import run_strong_baseline
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import resolve_device

__all__ = ["confirm_command", "export_command", "image_files", "predict_command", "predictions_table",
           "refit_command"]


def _runtime(storage: str, options: dict[str, Any]) -> tuple[OutputFolder | None, Runtime]:
    """The output folder of a storage file, and the runtime flags with the search's feature cache in it."""
    folder = OutputFolder.of_storage(storage)
    runtime = Runtime(**options)
    if folder is not None and runtime.cache:
        runtime = replace(runtime, cache_dir=folder.cache)
    return folder, runtime


def _refresh_report(study: optuna.Study, folder: OutputFolder | None, what: str) -> None:
    """Rewrite the report beside a SQLite or journal storage, if the search wrote one there."""
    if folder is not None and folder.report.is_file():
        write_report(study, folder.report)
        print(f"Updated {folder.report} {what}.")


def refit_command(args: argparse.Namespace, runtime_options: dict[str, Any]) -> int:
    """``autotransfer refit``: refit, save the model, refresh the report beside the storage; exit status 0.

    Args:
        args: The parsed command line.
        runtime_options: The runtime flags as :class:`~autotransfer.training.pipeline.Runtime` fields; the
            feature cache is the search's (``OUT/cache`` beside a SQLite or journal storage).
    """
    study = load_existing_study(args.storage, args.study_name)
    folder, runtime = _runtime(args.storage, runtime_options)
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
    _refresh_report(study, folder, "with the refit's figures")
    return 0


def confirm_command(args: argparse.Namespace, runtime_options: dict[str, Any], confirm_options: dict[str, Any]) -> int:
    """``autotransfer confirm``: run or complete the confirmation stage of a stored study; exit status 0.

    Everything the runs need comes from the study (dataset split and folder, budget, seed, zoo); the
    feature cache is the search's beside a SQLite or journal storage, and the report there is rewritten.
    """
    study = load_existing_study(args.storage, args.study_name)
    config = read_config(study)
    stored = dict(study.user_attrs.get(StudyAttr.DATA, {}))
    dataset = stored_dataset(study, args.data)
    zoo = resolve_zoo(args.zoo, stored.get("zoo"))
    folder, runtime = _runtime(args.storage, runtime_options)
    settings = SearchSettings(seed=int(stored.get("seed", 0)), device=args.device, **confirm_options)
    space = load_search_space(config["space"])
    baseline = config.get("baseline")
    if isinstance(baseline, dict):  # the space the trials were drawn from held the baseline recipe
        space, _ = space.including(Strategy.from_params(baseline["params"]))
    objective = Objective(dataset, space, read_budget(config), zoo, settings, runtime, resolve_device(args.device))
    decision = run_confirmation(study, objective, budget_seconds=None)
    run_strong_baseline(study, objective)  # its runs on the new repeats, so the comparison stays paired
    record = study.user_attrs.get(StudyAttr.DECISION)
    if decision is None or not isinstance(record, dict):
        print(f"No decision: {study.user_attrs.get(StudyAttr.CONFIRM_SKIPPED, 'the stage did not run')}.")
    else:
        print("\n".join(describe_decision(record)))
    _refresh_report(study, folder, "with the decision")
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


def export_command(args: argparse.Namespace) -> int:
    """``autotransfer export MODEL --onnx FILE``: write a saved model as ONNX; exit status 0."""
    model = load_model(args.model)
    path = model.export_onnx(args.onnx)
    shape = ", ".join(map(str, model.input_size))
    print(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB): input 'images' (B, {shape}) float32, output "
          f"'probabilities' (B, {model.n_classes}); classes and preprocessing in its metadata")
    return 0


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
