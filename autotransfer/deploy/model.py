"""A trained strategy as a model people can use: predict, save, load.

A saved model is a folder with two files:

* ``model.safetensors``: every tensor of the :class:`~autotransfer.models.network.BackboneWithHead` (backbone
  and head), in the safetensors format, which holds only tensors and cannot run code when read;
* ``model.json``: the backbone (zoo entry or timm name, the timm architecture and its
  ``create_model`` arguments), the strategy, the class names, the preprocessing, the metrics, how it
  was trained, the library versions, and the SHA-256 of the weights file.

:func:`load_model` rebuilds the network from ``model.json`` (timm architecture with random weights,
frozen to the same depth, the same head), checks the weights file's SHA-256, and loads the tensors
with ``strict=True``. Nothing is unpickled, and no zoo or hub access is needed. A directory whose
weights were altered, whose JSON is incomplete or names an architecture timm does not know, or
whose tensors do not fit the network, is refused with :class:`ModelError` saying which.
"""

from __future__ import annotations

import hashlib
import json
import platform
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from autotransfer._version import __version__
from autotransfer.data.images import as_image_list, to_pil
from autotransfer.errors import ConfigError, ModelError, describe
from autotransfer.files import atomic_write_text, save_safetensors
from autotransfer.models.network import BackboneWithHead
from autotransfer.models.zoo import Zoo, feature_dim
from autotransfer.space.dimensions import DIMENSIONS
from autotransfer.space.strategy import Strategy
from autotransfer.training.pipeline import Preprocess, run_batched
from autotransfer.training.runtime import Runtime

__all__ = ["CONFIG_FILE", "WEIGHTS_FILE", "BackboneSpec", "TransferModel", "load_model"]

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model.json"
FORMAT = "autotransfer.model"
FORMAT_VERSION = 1
_PREPROCESS_KEYS = ("input_size", "interpolation", "mean", "std", "crop_pct", "crop_mode")
_CHUNK = 256  # images decoded at once by predict: bounds host memory for long lists of files


@dataclass(frozen=True)
class BackboneSpec:
    """How to rebuild a backbone's architecture without its pretrained weights.

    Attributes:
        name: The name the search used: a zoo entry or a timm name (``arch`` or ``arch.tag``).
        architecture: The ``timm.create_model`` model name.
        model_kwargs: Extra ``timm.create_model`` keyword arguments (e.g. ``{"pad_type": "same"}``).
        source: ``"zoo"`` (a local weight file) or ``"timm"`` (timm's hub download).
    """

    name: str
    architecture: str
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    source: str = "timm"

    @classmethod
    def resolve(cls, name: str, zoo: Zoo, *, model_kwargs: Mapping[str, Any] | None = None) -> BackboneSpec:
        """The spec of backbone ``name``: its zoo entry if the zoo has one, else the timm name itself.

        Args:
            name: Zoo entry or timm name.
            zoo: The local zoo.
            model_kwargs: The strategy recipe's extra ``timm.create_model`` arguments, on top of the entry's.
        """
        extra = dict(model_kwargs or {})
        if name in zoo:
            entry = zoo.entries[name]
            return cls(name, entry.architecture, {**entry.model_kwargs, **extra}, "zoo")
        return cls(name, name, extra, "timm")

    def create(self) -> torch.nn.Module:
        """The architecture with random weights and no classifier (``num_classes=0``); nothing is downloaded.

        Raises:
            ModelError: timm does not know the architecture, or rejects the keyword arguments.
        """
        if not timm.is_model(self.architecture):
            raise ModelError(f"The backbone architecture {self.architecture!r} (backbone {self.name!r}) is not a "
                             f"model timm {timm.__version__} knows (see timm.list_models()); the model file was "
                             "edited, or saved with a timm that has it.")
        try:
            return timm.create_model(self.architecture, pretrained=False, num_classes=0, **self.model_kwargs)
        except (TypeError, ValueError, RuntimeError) as err:
            raise ModelError(f"timm could not build {self.architecture!r} with {dict(self.model_kwargs)}: "
                             f"{type(err).__name__}: {err}") from err


class TransferModel:
    """A trained transfer strategy: predict class labels and probabilities, save, load.

    Built by :func:`autotransfer.refit` (or :meth:`SearchResult.refit`) and by :func:`load_model`.

    Args:
        net: The trained network; images ``(B, 3, H, W)`` in, logits ``(B, n_classes)`` out.
        classes: Class names; column ``k`` of :meth:`predict_proba` is ``classes[k]``.
        data_config: The backbone's preprocessing (timm data config: ``input_size``,
            ``interpolation``, ``mean``, ``std``, ``crop_pct``, ``crop_mode``).
        backbone: How to rebuild the backbone (:class:`BackboneSpec`).
        strategy: The strategy's parameters (``backbone``, ``freeze_depth``, ``head_width``, ``learning_rate``).
        metrics: What was measured, e.g. ``{"test": {"accuracy": ..., "n_images": ...}, "search": {...}}``.
        training: How it was trained (study, trial, epochs, splits, images, seconds, seed, device).
        runtime: Memory format and autocast of inference (default :class:`~autotransfer.training.pipeline.Runtime()`).

    Raises:
        ConfigError: Fewer than two or repeated class names, or a class count that differs from the head's.
    """

    def __init__(self, net: BackboneWithHead, *, classes: list[str] | tuple[str, ...], data_config: Mapping[str, Any],
                 backbone: BackboneSpec, strategy: Mapping[str, Any], metrics: Mapping[str, Any] | None = None,
                 training: Mapping[str, Any] | None = None, runtime: Runtime | None = None) -> None:
        if len(classes) < 2 or len(set(classes)) != len(classes):
            raise ConfigError(describe("classes", "at least two distinct class names", list(classes)))
        self.net = net.eval()
        self.classes = tuple(str(c) for c in classes)
        self.data_config = {k: data_config[k] for k in _PREPROCESS_KEYS if k in data_config}
        self.backbone = backbone
        self.strategy = dict(strategy)
        self.metrics: dict[str, Any] = dict(metrics or {})
        self.training: dict[str, Any] = dict(training or {})
        self.runtime = runtime or Runtime()
        self._preprocess = Preprocess.from_config(self.data_config)
        with torch.inference_mode():
            n_out = self.net.head(torch.zeros(1, feature_dim(net.backbone), device=self.device)).shape[-1]
        if n_out != len(self.classes):
            raise ConfigError(f"The head has {n_out} outputs but {len(self.classes)} class names were given.")

    @property
    def n_classes(self) -> int:
        """Number of classes."""
        return len(self.classes)

    @property
    def input_size(self) -> tuple[int, int, int]:
        """``(3, H, W)`` of preprocessed images."""
        c, h, w = self.data_config["input_size"]
        return int(c), int(h), int(w)

    @property
    def device(self) -> torch.device:
        """Where the network lives."""
        return next(self.net.parameters()).device

    def to(self, device: str | torch.device) -> TransferModel:
        """Move the network to ``device`` (``"cpu"``, ``"cuda"``, ...); returns ``self``."""
        self.net.to(torch.device(device))
        return self

    def predict_proba(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """Class probabilities (softmax of the logits).

        Args:
            images: Image paths, PIL images or arrays (one, or a sequence; see :mod:`autotransfer.data.images`),
                preprocessed here with the weights' eval transform (resize, centre crop, normalise); or a
                float tensor of shape ``(B, 3, H, W)`` (or ``(3, H, W)``) already preprocessed that way.
            batch_size: Images per forward pass.

        Returns:
            Float32 array of shape ``(B, n_classes)``; rows sum to 1, column ``k`` is ``classes[k]``.

        Raises:
            DataError: An image cannot be read or is not an accepted kind.
            ConfigError: A tensor of the wrong dtype or shape, or a bad ``batch_size``.
        """
        return torch.softmax(self.logits(images, batch_size=batch_size), dim=1).numpy()

    def predict(self, images: Any, *, batch_size: int = 32) -> np.ndarray:
        """Predicted class names, an array of shape ``(B,)``; ``images`` as in :meth:`predict_proba`."""
        return np.asarray(self.classes)[self.predict_proba(images, batch_size=batch_size).argmax(axis=1)]

    def logits(self, images: Any, *, batch_size: int = 32) -> torch.Tensor:
        """Float32 logits of shape ``(B, n_classes)`` on the CPU; ``images`` as in :meth:`predict_proba`."""
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(describe("batch_size", "a positive integer", batch_size))
        self.net.eval()
        device = self.device

        def forward(x: torch.Tensor) -> torch.Tensor:
            return self.runtime.run(self.net, x, device)

        if isinstance(images, torch.Tensor):
            x = self._check_tensor(images)
            return run_batched(forward, TensorDataset(x, torch.zeros(len(x))), batch_size, device=device)
        items = as_image_list(images)
        chunks = []
        for start in range(0, len(items), _CHUNK):
            pixels = torch.stack([self._preprocess.eval(to_pil(item, start + i))
                                  for i, item in enumerate(items[start:start + _CHUNK])])
            chunks.append(run_batched(forward, TensorDataset(pixels, torch.zeros(len(pixels))), batch_size,
                                      device=device, preprocess=self._preprocess))
        return torch.cat(chunks)

    def _check_tensor(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 3:
            x = x.unsqueeze(0)
        if not x.is_floating_point() or x.dim() != 4 or tuple(x.shape[1:]) != self.input_size:
            raise ConfigError(describe("images", f"a float tensor of shape (B, {', '.join(map(str, self.input_size))})"
                                       " preprocessed with the model's data_config, or image paths, PIL images or "
                                       "arrays", f"{x.dtype} tensor of shape {tuple(x.shape)}"))
        return x.float()

    def metadata(self) -> dict[str, Any]:
        """Everything ``model.json`` records except the weights' checksum (JSON-serialisable)."""
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION,
            "backbone": {**asdict(self.backbone), "model_kwargs": dict(self.backbone.model_kwargs)},
            "strategy": self.strategy, "classes": list(self.classes),
            "preprocessing": {k: list(v) if isinstance(v, tuple) else v for k, v in self.data_config.items()},
            "metrics": self.metrics, "training": self.training,
            "versions": {"autotransfer": __version__, "torch": torch.__version__, "timm": timm.__version__,
                         "python": platform.python_version()},
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``model.safetensors`` and ``model.json`` into ``directory`` (created if needed).

        Each file is written to a temporary name and renamed into place, weights first, so a crash
        never leaves a half-written file; ``model.json`` carries the weights' SHA-256, so a crash
        between the two renames leaves a folder :func:`load_model` refuses rather than a wrong model.

        Returns:
            The directory.
        """
        out = Path(directory)
        state = self.net.state_dict()
        weights = save_safetensors(out / WEIGHTS_FILE, state, {"format": FORMAT})
        record = {**self.metadata(),
                  "weights": {"file": WEIGHTS_FILE, "sha256": _sha256(weights), "n_tensors": len(state)},
                  "saved": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        atomic_write_text(out / CONFIG_FILE, json.dumps(record, indent=2) + "\n")
        return out

    def export_onnx(self, path: str | Path) -> Path:
        """Write the model as ONNX (:func:`autotransfer.deploy.onnx_export.export_onnx`): input ``images``
        ``(B, 3, H, W)`` float32 preprocessed as ``data_config`` says, output ``probabilities`` ``(B, K)``,
        the class names and preprocessing in the file's metadata.

        Raises:
            ConfigError: The ``onnx`` extra is not installed. ModelError: The exporter failed.
        """
        from autotransfer.deploy.onnx_export import export_onnx

        return export_onnx(self, path)

    def __repr__(self) -> str:
        s = self.strategy
        return (f"TransferModel(backbone={self.backbone.name!r}, freeze_depth={s.get('freeze_depth')}, "
                f"head_width={s.get('head_width')}, classes={list(self.classes)})")


def load_model(directory: str | Path, *, device: str | torch.device = "cpu") -> TransferModel:
    """Load a model saved by :meth:`TransferModel.save`, without unpickling anything.

    Args:
        directory: The model folder (``model.json`` and ``model.safetensors``).
        device: Where to put the network.

    Returns:
        The :class:`TransferModel`, in eval mode.

    Raises:
        ModelError: A file is missing, ``model.json`` is not valid or lacks a field, names an
            architecture timm does not know, the weights' SHA-256 differs from the one recorded
            (altered or corrupted), or the tensors do not fit the rebuilt network.
    """
    folder = Path(directory)
    record = _read_record(folder)
    weights = folder / str(record["weights"].get("file", WEIGHTS_FILE))
    if weights.name != WEIGHTS_FILE or not weights.is_file():
        raise ModelError(f"{folder} has no weights file {WEIGHTS_FILE}; it is not a complete model folder.")
    expected, actual = record["weights"].get("sha256"), _sha256(weights)
    if actual != expected:
        raise ModelError(f"The weights file {weights} was altered or corrupted: its SHA-256 is {actual}, but "
                         f"{CONFIG_FILE} records {expected}. Save the model again from its study (autotransfer refit).")
    backbone = BackboneSpec(**_fields(record["backbone"], "backbone", ("name", "architecture", "model_kwargs",
                                                                       "source")))
    strategy, classes = record["strategy"], record["classes"]
    net = BackboneWithHead.build(backbone.create(), float(strategy["freeze_depth"]), int(strategy["head_width"]),
                            len(classes))
    try:
        state = load_file(str(weights))
        net.load_state_dict(state, strict=True)
    except (SafetensorError, RuntimeError, ValueError) as err:
        raise ModelError(f"The tensors in {weights} do not fit {backbone.architecture!r} with freeze depth "
                         f"{strategy['freeze_depth']} and head width {strategy['head_width']}: "
                         f"{str(err).splitlines()[0][:500]}") from err
    model = TransferModel(net, classes=classes, data_config=_data_config(record["preprocessing"]), backbone=backbone,
                          strategy=strategy, metrics=record.get("metrics"), training=record.get("training"))
    return model.to(device)


def _read_record(folder: Path) -> dict[str, Any]:
    """``model.json``, checked for every field :func:`load_model` needs."""
    path = folder / CONFIG_FILE
    if not folder.is_dir():
        raise ModelError(describe("model directory", f"a folder holding {CONFIG_FILE} and {WEIGHTS_FILE}", str(folder)))
    if not path.is_file():
        raise ModelError(f"{folder} has no {CONFIG_FILE}; it is not a model saved by TransferModel.save "
                         "(or autotransfer refit --out).")
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ModelError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise ModelError(f"{path} is not an autotransfer model file (its 'format' is not {FORMAT!r}).")
    version = record.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise ModelError(f"{path} has format_version {version!r}; this autotransfer {__version__} reads versions "
                         f"up to {FORMAT_VERSION}. Upgrade autotransfer to load it.")
    for key, kind in (("backbone", dict), ("strategy", dict), ("classes", list), ("preprocessing", dict),
                      ("weights", dict)):
        if not isinstance(record.get(key), kind):
            raise ModelError(f"{path} lacks the field {key!r} (a JSON {'object' if kind is dict else 'array'}); "
                             "the file is incomplete or was edited.")
    _check_strategy(record["strategy"], path)
    classes = record["classes"]
    if len(classes) < 2 or not all(isinstance(c, str) for c in classes) or len(set(classes)) != len(classes):
        raise ModelError(f"{path}: 'classes' must be at least two distinct names; got {classes[:10]!r}.")
    missing = [k for k in ("input_size", "interpolation", "mean", "std") if k not in record["preprocessing"]]
    if missing:
        raise ModelError(f"{path}: 'preprocessing' lacks {missing}; the file is incomplete or was edited.")
    return record


def _check_strategy(strategy: dict[str, Any], path: Path) -> None:
    """Every dimension of the stored strategy is declared and holds a value its declaration accepts."""
    try:
        Strategy.from_params(strategy)
    except ConfigError as err:
        raise ModelError(f"{path}: {err} The file is incomplete, was edited, or comes from a newer "
                         "autotransfer.") from err
    for name, value in strategy.items():
        try:
            DIMENSIONS[name].check(name, value)
        except ConfigError as err:
            raise ModelError(f"{path}: " + str(err).replace(f"The '{name}' ", f"strategy.{name} ")) from err


def _fields(raw: dict[str, Any], name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    missing = [k for k in keys if k not in raw]
    if missing or not isinstance(raw.get("architecture"), str) or not isinstance(raw.get("model_kwargs"), dict):
        raise ModelError(f"{CONFIG_FILE}: '{name}' must have {list(keys)} (architecture a string, model_kwargs an "
                         f"object); got {raw!r}.")
    return {k: raw[k] for k in keys}


def _data_config(raw: dict[str, Any]) -> dict[str, Any]:
    """timm's data config from JSON (timm's configs hold tuples where JSON has lists)."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in raw.items() if k in _PREPROCESS_KEYS}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
