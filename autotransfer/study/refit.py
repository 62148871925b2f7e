"""Refit: retrain a study's chosen strategy on the full budget and evaluate it once on held-out images.

The search scores strategies on a small budget with early stopping; the refit trains the winner
(or any finished trial's strategy) from its pretrained weights for the whole budget, without
pruning, on the train and val images together, and evaluates the result once on the test split,
as scikit-learn's ``GridSearchCV(refit=True)`` refits on all the data it searched. The test figures
are stored in the study attribute ``StudyAttr.REFIT`` (the latest refit) and the report shows
them, labelled as test. The test split never feeds selection.

A dataset without a test split (one that came as ``train/`` and ``val/`` folders) has no image the
refit could be judged on if it trained on val too, so by default it then trains on train only and
is evaluated once on val; that figure is labelled val, and it is optimistic, since val also chose the
strategy. ``train_on="train+val"`` trains on everything and reports no held-out figure.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import optuna
import torch
import torch.nn.functional as F
from optuna.trial import FrozenTrial, TrialState

from autotransfer.data.dataset import DIGITS, ImageDataset, open_image
from autotransfer.deploy.model import BackboneSpec, TransferModel
from autotransfer.errors import ConfigError, DataError, StudyMismatchError, describe
from autotransfer.models.network import BackboneWithHead
from autotransfer.models.zoo import Zoo, check_backbones, create_backbone, load_zoo, resolve_weights
from autotransfer.settings import METRICS, Budget
from autotransfer.space.strategy import CORE, Strategy
from autotransfer.storage.records import StudyAttr, TrialAttr, read_budget, read_config, recommended_trial
from autotransfer.study.objective import trial_seed
from autotransfer.training.runtime import Runtime
from autotransfer.training.trainer import classification_metrics, fit, resolve_device, seed_everything

__all__ = ["TRAIN_ON", "choose_trial", "evaluate_model", "refit", "resolve_zoo", "stored_dataset"]

logger = logging.getLogger(__name__)

TRAIN_ON = ("auto", "train", "train+val")
_FINISHED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)


def refit(
    study: optuna.Study,
    *,
    trial: int | None = None,
    epochs: int | None = None,
    train_on: str = "auto",
    dataset: ImageDataset | None = None,
    data: str | Path | None = None,
    zoo: str | Path | Zoo | None = None,
    device: str = "auto",
    runtime: Runtime | None = None,
) -> TransferModel:
    """Retrain a strategy of ``study`` on the full budget, evaluate it once, and return the model.

    Everything is checked (trial, options, dataset files, backbone weights) before training starts.

    Args:
        study: A study made by :func:`autotransfer.search` (any storage; it must be writable).
        trial: The trial whose strategy to refit (complete, pruned or failed); None: the recommended
            strategy's (the confirmation stage's pick, else Optuna's best trial).
        epochs: Epochs to train; None: the study's budget (``--epochs`` of the search).
        train_on: ``"train+val"``, ``"train"``, or ``"auto"``: train+val when the dataset has a test
            split, else train (so that val can judge the refit).
        dataset: The searched dataset; None: rebuilt from the study (its stored split and dataset
            folder, or ``data``).
        data: The dataset folder, when it moved since the search (keys are read from the study).
        zoo: Local zoo (default ``$AUTOTRANSFER_ZOO``, then the zoo the search used).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        runtime: Caches and accelerator settings (default :class:`~autotransfer.training.pipeline.Runtime()`).

    Returns:
        The trained :class:`~autotransfer.deploy.model.TransferModel`. Its ``metrics`` hold the held-out
        figures under ``"test"`` (or ``"val"``) and the search's val figures of the trial under
        ``"search"``; ``training`` says what it was trained on and for how long.

    Raises:
        ConfigError: Not an autotransfer study, no such trial, a trial without a complete strategy,
            or a bad option. DataError: dataset files are missing (the message says how many and
            names some). StudyMismatchError: ``dataset`` is not the one the study searched.
        WeightsNotFoundError: The backbone's weights cannot be found. TrialFailed: training diverged.
    """
    if train_on not in TRAIN_ON:
        raise ConfigError(describe("train_on", f"one of {list(TRAIN_ON)}", train_on))
    config = _config(study)
    chosen = choose_trial(study, trial)
    budget = _budget(config, chosen, epochs)
    strategy = Strategy.from_params(chosen.params)
    stored = dict(study.user_attrs.get(StudyAttr.DATA, {}))
    dataset = _check_dataset(dataset, config) if dataset is not None else stored_dataset(study, data)
    local_zoo = resolve_zoo(zoo, stored.get("zoo"))
    check_backbones([strategy.backbone], local_zoo)
    resolve_weights([strategy.backbone], local_zoo)
    torch_device = resolve_device(device)
    runtime = runtime or Runtime()
    mode = train_on if train_on != "auto" else ("train+val" if dataset.splits.get("test") else "train")
    held_out = "test" if dataset.splits.get("test") else ("val" if mode == "train" else None)
    train_items = dataset.splits["train"] + (dataset.splits["val"] if mode == "train+val" else [])
    training = replace(dataset, splits={"train": sorted(train_items), "val": [], "test": []})

    seed = trial_seed(int(stored.get("seed", 0)), chosen.number)
    logger.info("Refitting trial %d (%s) on %s (%d images) for %d epochs.", chosen.number, strategy.family, mode,
                len(train_items), budget.epochs)
    seed_everything(seed)  # before building: the head's initial weights come from this seed, as in the trial
    recipe = strategy.recipe()
    backbone, data_config = create_backbone(strategy.backbone, local_zoo, model_kwargs=recipe.model_kwargs)
    data_config = recipe.data_config(data_config)  # the strategy's input size, if it has one
    net = BackboneWithHead.build(backbone, strategy.freeze_depth, strategy.head_width, dataset.n_classes)
    result = fit(net, training, data_config, budget, strategy.learning_rate, seed=seed, device=torch_device,
                 hflip=dataset.root != DIGITS, runtime=runtime, validate=False, recipe=recipe)
    spec = BackboneSpec.resolve(strategy.backbone, local_zoo, model_kwargs=recipe.model_kwargs)
    model = TransferModel(net, classes=dataset.classes, data_config=data_config, backbone=spec,
                          strategy=strategy.as_dict(), runtime=runtime)
    model.training = {"study": study.study_name, "trial": chosen.number, "train_on": mode,
                      "n_images": len(train_items), "epochs": budget.epochs, "batch_size": budget.batch_size,
                      "seconds": round(result.seconds, 3), "train_loss": result.train_loss, "inputs": result.inputs,
                      "seed": seed, "device": str(torch_device)}
    model.metrics = {"search": _search_metrics(chosen, budget.metric)}
    record: dict[str, Any] = {"trial": chosen.number, "params": strategy.as_dict(), **model.training,
                              "eval_split": held_out, "finished": _now()}
    if held_out is not None:
        metrics, predictions = evaluate_model(model, dataset, held_out, batch_size=budget.batch_size)
        model.metrics[held_out] = {**metrics, "n_images": len(predictions)}
        record.update(metrics=metrics, predictions=predictions)
    study.set_user_attr(StudyAttr.REFIT, record)
    return model


def evaluate_model(model: TransferModel, dataset: ImageDataset, split: str, *,
                   batch_size: int = 32) -> tuple[dict[str, float], list[int]]:
    """Metrics and predicted class indices of ``model`` on one split, through :meth:`TransferModel.logits`.

    The images go through exactly the path ``model.predict`` takes for files, so predicting the
    split's files with the saved model reproduces these figures.

    Returns:
        ``(metrics, predictions)``: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``loss``
        (mean cross-entropy), and the predicted class index of every image in split order.
    """
    items = dataset.splits[split]
    images: list[Any] = ([open_image(dataset.root, key) for key, _ in items] if dataset.root == DIGITS
                         else [str(Path(dataset.root) / key) for key, _ in items])
    logits = model.logits(images, batch_size=batch_size)
    labels = torch.tensor([label for _, label in items], dtype=torch.long)
    predictions = logits.argmax(dim=1).numpy()
    loss = float(F.cross_entropy(logits, labels))
    return classification_metrics(labels.numpy(), predictions, loss), [int(p) for p in predictions]


def choose_trial(study: optuna.Study, number: int | None) -> FrozenTrial:
    """The trial to refit: ``number``, or the best complete trial.

    Raises:
        ConfigError: No complete trial (for None), no such number, a trial still running or waiting,
            or one without all four strategy parameters.
    """
    trials = study.get_trials(deepcopy=False)
    if number is None:
        best = recommended_trial(study)
        if best is None:
            raise ConfigError(f"Study {study.study_name!r} has no complete trial to refit; pass a trial number "
                              "(--trial N) of a pruned one, or run the search longer.")
        chosen = best
    else:
        found = [t for t in trials if t.number == number]
        if isinstance(number, bool) or not found:
            raise ConfigError(describe("trial", f"a trial number of study {study.study_name!r} "
                                       f"(0 to {len(trials) - 1})", number))
        chosen = found[0]
    if chosen.state not in _FINISHED:
        raise ConfigError(f"Trial {chosen.number} is {chosen.state.name.lower()}; refit a finished trial "
                          "(complete, pruned or failed).")
    missing = [k for k in CORE if k not in chosen.params]
    if missing:
        raise ConfigError(f"Trial {chosen.number} has no {missing} (it failed before sampling its whole "
                          "strategy); choose another trial.")
    return chosen


def stored_dataset(study: optuna.Study, data: str | Path | None = None) -> ImageDataset:
    """The dataset a study searched, rebuilt from its stored split (keys and labels).

    Args:
        study: A study made by :func:`autotransfer.search`.
        data: The dataset folder; None: the folder the search recorded.

    Raises:
        ConfigError: The study records no dataset folder and ``data`` is None.
        DataError: Files of the split are missing under the folder (counted, some named).
    """
    config = _config(study)
    root = str(data) if data is not None else study.user_attrs.get(StudyAttr.DATA, {}).get("root")
    if root is None:
        raise ConfigError(f"Study {study.study_name!r} does not record where its images are (made by an older "
                          "autotransfer, or from in-memory images); pass the dataset folder (--data DIR, data=...).")
    if root != DIGITS:
        root = str(Path(root).expanduser().resolve())
    dropped = {str(path) for path, _ in study.user_attrs.get(StudyAttr.EXCLUDED, [])}
    splits = {name: [(str(k), int(y)) for k, y in items if str(Path(root) / str(k)) not in dropped]
              for name, items in study.user_attrs.get(StudyAttr.SPLIT, {}).items()}
    if not splits.get("train") or not splits.get("val"):
        raise ConfigError(f"Study {study.study_name!r} has no stored train/val split; it was not made by "
                          "autotransfer.search.")
    if root != DIGITS:
        missing = [str(Path(root) / k) for items in splits.values() for k, _ in items if not (Path(root) / k).is_file()]
        if missing:
            raise DataError(f"{len(missing)} image(s) of study {study.study_name!r} are missing under {root}, e.g. "
                            f"{missing[:3]}; pass the folder the search used (--data DIR) or restore the files.")
    dataset_config = config["dataset"]
    split = config.get("split", {})
    splits.setdefault("test", [])
    return ImageDataset(str(dataset_config.get("name", Path(root).name)), root, tuple(dataset_config["classes"]),
                        splits, [], str(split.get("method", "stratified")), split.get("seed"))


def _config(study: optuna.Study) -> dict[str, Any]:
    config = read_config(study)
    if "budget" not in config or "dataset" not in config:
        raise ConfigError(f"Study {study.study_name!r} was not made by autotransfer.search (it has no stored "
                          "configuration), so it cannot be refit.")
    return config


def _budget(config: dict[str, Any], trial: FrozenTrial, epochs: int | None) -> Budget:
    """The search's budget, with ``epochs`` if given and the trial's own batch size (halved after an OOM)."""
    batch_size = trial.user_attrs.get(TrialAttr.BATCH_SIZE)
    return read_budget(config, epochs=epochs, batch_size=None if batch_size is None else int(batch_size))


def _check_dataset(dataset: ImageDataset, config: dict[str, Any]) -> ImageDataset:
    if dataset.fingerprint() != config["dataset"].get("fingerprint"):
        raise StudyMismatchError(f"The dataset {dataset.name!r} ({dataset.root}) is not the one the study searched "
                                 "(its files, labels or split differ); refit with the study's dataset.")
    return dataset


def resolve_zoo(zoo: str | Path | Zoo | None, stored: str | None) -> Zoo:
    """The zoo to build the backbone from: given, then ``$AUTOTRANSFER_ZOO``, then the search's zoo file."""
    if isinstance(zoo, Zoo):
        return zoo
    local = load_zoo(zoo)
    if local.path is None and stored and Path(stored).is_file():
        return load_zoo(stored)
    return local


def _search_metrics(trial: FrozenTrial, metric: str) -> dict[str, Any]:
    """What the search measured for the trial: its val figures after its last epoch."""
    attrs = trial.user_attrs
    return {"trial": trial.number, "state": trial.state.name.lower(), "metric": metric,
            "epochs": attrs.get(TrialAttr.EPOCHS_RUN),
            **{key: attrs[key] for key in map(TrialAttr.val, METRICS) if key in attrs}}


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")

