"""Backbones with pretrained weights: a local zoo file first, then timm's hub download.

The zoo format: one entry per weight file::

    mobilenetv2_100.tf2_in1k:
      architecture: mobilenetv2_100          # timm model name
      file: weights.safetensors              # beside the zoo file (or absolute)
      model_kwargs: {pad_type: same}         # extra timm.create_model keyword arguments
      pretrained_cfg: {input_size: [3, 224, 224], mean: [...], std: [...], ...}

Weights are loaded by timm's own loader (``pretrained_cfg_overlay=dict(file=...)``), so the
classifier is dropped exactly as timm drops it. A backbone whose weights cannot be found is an
error naming what was tried, never a silent random initialisation.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import timm
import yaml
from torch import nn

from autotransfer.errors import ConfigError, WeightsNotFoundError, describe

__all__ = ["ZOO_ENV", "Zoo", "ZooEntry", "check_backbones", "create_backbone", "feature_dim", "load_zoo",
           "resolve_weights", "smallest_input_side"]

ZOO_ENV = "AUTOTRANSFER_ZOO"
_ENTRY_KEYS = {"architecture", "file", "model_kwargs", "pretrained_cfg", "source"}


@dataclass(frozen=True)
class ZooEntry:
    """One local weight file and how to build its model.

    Attributes:
        name: The zoo name used in search spaces, e.g. ``"mobilenetv2_100.tf2_in1k"``.
        architecture: The timm model name.
        file: Absolute path of the safetensors (or ``.pth``) state dict.
        model_kwargs: Extra ``timm.create_model`` keyword arguments.
        pretrained_cfg: Preprocessing fields overlaid on timm's pretrained config.
    """

    name: str
    architecture: str
    file: Path
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    pretrained_cfg: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Zoo:
    """A local model zoo: named pretrained weight files.

    Attributes:
        entries: Zoo entries by name.
        path: The zoo file, or None for an empty zoo.
    """

    entries: Mapping[str, ZooEntry] = field(default_factory=dict)
    path: Path | None = None

    def __contains__(self, name: object) -> bool:
        return name in self.entries


def load_zoo(path: str | Path | None = None) -> Zoo:
    """Read a zoo file, or the one named by ``$AUTOTRANSFER_ZOO``, or return an empty zoo.

    Args:
        path: The zoo YAML file. None falls back to the ``AUTOTRANSFER_ZOO`` environment variable.

    Returns:
        The zoo; empty when neither the argument nor the variable is set.

    Raises:
        ConfigError: The file is missing, not YAML, or an entry lacks a key or names a weight
            file that does not exist.
    """
    if path is None:
        path = os.environ.get(ZOO_ENV) or None
        if path is None:
            return Zoo()
    zoo_path = Path(path).expanduser().resolve()
    if not zoo_path.is_file():
        raise ConfigError(describe("zoo", f"an existing zoo YAML file (--zoo or ${ZOO_ENV})", str(path)))
    try:
        raw = yaml.safe_load(zoo_path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"The zoo {str(zoo_path)!r} is not valid YAML: {err}") from err
    if not isinstance(raw, Mapping):
        raise ConfigError(describe(str(zoo_path), "a mapping of zoo names to entries", type(raw).__name__))
    return Zoo({str(k): _parse_entry(str(k), v, zoo_path) for k, v in raw.items()}, zoo_path)


def _parse_entry(name: str, raw: Any, zoo_path: Path) -> ZooEntry:
    if not isinstance(raw, Mapping) or not {"architecture", "file"} <= set(raw):
        raise ConfigError(describe(f"{name}", "a mapping with at least 'architecture' and 'file'", raw))
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise ConfigError(f"Unknown key {sorted(unknown)[0]!r} in zoo entry {name!r}; "
                          f"accepted keys: {sorted(_ENTRY_KEYS)}.")
    file = Path(str(raw["file"])).expanduser()
    file = file if file.is_absolute() else zoo_path.parent / file
    if not file.is_file():
        raise ConfigError(describe(f"{name}.file", f"a weight file that exists (zoo {zoo_path})", str(file)))
    return ZooEntry(
        name=name,
        architecture=str(raw["architecture"]),
        file=file,
        model_kwargs=dict(raw.get("model_kwargs") or {}),
        # timm's own configs hold tuples (input_size, mean, std); YAML gives lists
        pretrained_cfg={k: tuple(v) if isinstance(v, list) else v
                        for k, v in dict(raw.get("pretrained_cfg") or {}).items()},
    )


def check_backbones(names: list[str], zoo: Zoo) -> None:
    """Fail fast on backbone names that neither the zoo nor timm knows.

    Args:
        names: Backbone names from a search space.
        zoo: The local zoo.

    Raises:
        WeightsNotFoundError: A name is not in the zoo and timm has no pretrained weights for it.
    """
    for name in names:
        if name in zoo:
            continue
        if not timm.list_pretrained(name) and not timm.list_pretrained(f"{name}.*"):
            where = _zoo_tried(zoo)
            raise WeightsNotFoundError(
                f"Backbone {name!r} has no pretrained weights: it is not in the local zoo ({where}) "
                f"and timm lists no pretrained weights of that name (see timm.list_pretrained()). "
                f"Pass --zoo FILE or set ${ZOO_ENV}, or use a timm name such as 'resnet18.a1_in1k'."
            )


def resolve_weights(names: list[str], zoo: Zoo) -> None:
    """Make sure every backbone's weights are there before a study starts; download hub weights once.

    A zoo entry's file must load as weights: a safetensors file's header is read (``safetensors.safe_open``,
    which does not read the tensors), any other file is opened by ``torch.load(weights_only=True,
    mmap=True)``. A timm hub backbone is built once with ``pretrained=True``, which downloads its weights
    into the Hugging Face cache (with the hub's own progress bar) so that no trial and no worker process
    downloads; a backbone already in the cache costs one model build.

    Args:
        names: Backbone names from a search space.
        zoo: The local zoo.

    Raises:
        WeightsNotFoundError: A zoo file is not a weights file (a truncated download, a text file), or a hub
            download failed; the message names the backbone, the file or the download, and what to do.
    """
    for name in names:
        if name in zoo:
            _check_weights_file(name, zoo)
            continue
        try:
            timm.create_model(name, pretrained=True, num_classes=0)
        except Exception as err:  # timm raises many kinds (HTTP, OSError, RuntimeError, ...)
            raise WeightsNotFoundError(
                f"The pretrained weights of backbone {name!r} could not be downloaded from the Hugging Face hub: "
                f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}. On a machine without hub "
                f"access pass --zoo FILE (or set ${ZOO_ENV}) with a local weights file for it, or remove it from "
                "the search space.") from err


def _check_weights_file(name: str, zoo: Zoo) -> None:
    import torch
    from safetensors import SafetensorError, safe_open

    path = zoo.entries[name].file
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as weights:
                if not list(weights.keys()):
                    raise ValueError("it holds no tensors")
        else:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except (SafetensorError, OSError, RuntimeError, ValueError, IndexError, EOFError, KeyError,
            pickle.UnpicklingError) as err:
        raise WeightsNotFoundError(
            f"Zoo entry {name!r} ({zoo.path}) names {str(path)!r}, which is not a weights file "
            f"({type(err).__name__}: {err}). Replace the file (a truncated download?) or remove the entry's "
            "backbone from the search space.") from err


def smallest_input_side(names: list[str], zoo: Zoo) -> int | None:
    """The smallest input side (px) of the backbones' pretrained configs (zoo entry, else timm's registry)."""
    sides = []
    for name in names:
        config: Mapping[str, Any] = zoo.entries[name].pretrained_cfg if name in zoo else _timm_config(name)
        size = config.get("input_size")
        if size:
            sides.append(int(size[-1]))
    return min(sides) if sides else None


def _timm_config(name: str) -> dict[str, Any]:
    try:
        config = timm.models.get_pretrained_cfg(name)
    except (RuntimeError, ValueError, KeyError):
        return {}
    return config.to_dict() if config is not None else {}


def _zoo_tried(zoo: Zoo) -> str:
    """The local zoo as an error message names it."""
    return f"zoo {zoo.path} (entries: {sorted(zoo.entries)})" if zoo.path else "no zoo given"


def create_backbone(name: str, zoo: Zoo, *, model_kwargs: Mapping[str, Any] | None = None
                    ) -> tuple[nn.Module, dict[str, Any]]:
    """Create a pretrained backbone without its classifier, and its preprocessing config.

    Args:
        name: A zoo entry name, or a timm name (``arch`` or ``arch.tag``) downloaded by timm.
        zoo: The local zoo, tried first.
        model_kwargs: Extra ``timm.create_model`` keyword arguments from the strategy's recipe
            (e.g. ``drop_path_rate``), on top of the zoo entry's own.

    Returns:
        ``(model, data_config)``: a timm model built with ``num_classes=0`` (its
        ``forward_head(..., pre_logits=True)`` gives features of shape ``(B, head_hidden_size)``),
        and the data config from ``timm.data.resolve_model_data_config`` (``input_size``, ``mean``,
        ``std``, ``interpolation``, ``crop_pct``, ...).

    Raises:
        WeightsNotFoundError: Neither the zoo nor timm's download yielded weights; the message
            names every place tried.
    """
    extra = dict(model_kwargs or {})
    if name in zoo:
        entry = zoo.entries[name]
        overlay = {**entry.pretrained_cfg, "file": str(entry.file)}
        try:
            model = timm.create_model(entry.architecture, pretrained=True, num_classes=0,
                                      pretrained_cfg_overlay=overlay, **{**entry.model_kwargs, **extra})
        except (RuntimeError, OSError, ValueError) as err:
            raise WeightsNotFoundError(
                f"Zoo entry {name!r} ({zoo.path}) could not load {entry.file} into timm "
                f"{entry.architecture!r}: {err}") from err
    else:
        try:
            model = timm.create_model(name, pretrained=True, num_classes=0, **extra)
        except Exception as err:  # timm raises many kinds (HTTP, OSError, RuntimeError, ...)
            where = _zoo_tried(zoo)
            raise WeightsNotFoundError(
                f"Pretrained weights for backbone {name!r} were not found. Tried: the local zoo "
                f"({where}); timm's download of {name!r}: {type(err).__name__}: {err}. "
                f"On a machine without hub access pass --zoo FILE or set ${ZOO_ENV}."
            ) from err
    data_config = timm.data.resolve_model_data_config(model)
    return model, data_config


def feature_dim(model: nn.Module) -> int:
    """Width of ``forward_head(forward_features(x), pre_logits=True)``: ``head_hidden_size`` in timm.

    Args:
        model: A timm model.

    Returns:
        The number of pre-logits features per image.
    """
    width: Any = getattr(model, "head_hidden_size", None) or model.num_features
    return int(width)

