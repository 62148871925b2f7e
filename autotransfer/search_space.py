"""Search spaces: which transfer strategies a study may sample, read from YAML.

A space file names four dimensions (DESIGN.md, "Vocabulary")::

    description: free text                       # optional
    backbone: [mobilenetv2_100.tf2_in1k, ...]     # zoo or timm names (choices)
    freeze_depth: {low: 0.0, high: 1.0, step: 0.25}   # or a list of choices in [0, 1]
    head_width: [0, 256]                          # 0 = linear head, else MLP hidden width
    learning_rate: {low: 1.0e-4, high: 1.0e-2}    # log-uniform

A list is shorthand for ``{choices: [...]}``. Files are read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from .errors import ConfigError, describe

__all__ = [
    "BASELINE_RECIPE",
    "SearchSpace",
    "Strategy",
    "bundled_spaces",
    "load_search_space",
    "strategy_family",
]

_DIMENSIONS = ("backbone", "freeze_depth", "head_width", "learning_rate")

BASELINE_RECIPE: Mapping[str, float | int] = {"freeze_depth": 1.0, "head_width": 1024, "learning_rate": 1e-4}
"""The textbook transfer recipe: backbone frozen, a Dense(1024) ReLU head, learning rate 1e-4.

Source: the Keras Applications guide, "Fine-tune InceptionV3 on a new set of classes"
(``Dense(1024, activation='relu')`` on the pooled features of a frozen base; 1e-4 for the
fine-tuning stage). A study runs it as its first trial, on the space's first backbone, so the
report can show what the search gained over it.
"""
_TOP_LEVEL = (*_DIMENSIONS, "description")


@dataclass(frozen=True)
class Strategy:
    """One point of the search space: how to transfer one backbone.

    Attributes:
        backbone: Zoo entry or timm model name (``arch`` or ``arch.tag``).
        freeze_depth: Fraction of the backbone's block groups frozen, in [0, 1]:
            0.0 is full fine-tuning, 1.0 a linear probe.
        head_width: 0 for a linear head, else the hidden width of a one-hidden-layer MLP head.
        learning_rate: Peak AdamW learning rate (cosine-decayed over the budget).
    """

    backbone: str
    freeze_depth: float
    head_width: int
    learning_rate: float

    def as_dict(self) -> dict[str, Any]:
        """Return the strategy as a plain dict (the Optuna ``params`` of its trial)."""
        return asdict(self)

    @property
    def family(self) -> str:
        """The strategy family: backbone x transfer mode x head kind (DESIGN.md)."""
        return strategy_family(self.backbone, self.freeze_depth, self.head_width)


def strategy_family(backbone: str, freeze_depth: float, head_width: int) -> str:
    """Name the strategy family a person compares, e.g. ``"mobilenetv2_100 / linear probe / MLP head"``.

    Args:
        backbone: Zoo or timm name.
        freeze_depth: Fraction of frozen block groups in [0, 1].
        head_width: 0 for a linear head, else MLP hidden width.
    """
    if freeze_depth >= 1.0:
        mode = "linear probe"
    elif freeze_depth <= 0.0:
        mode = "full fine-tuning"
    else:
        mode = "partial fine-tuning"
    head = "linear head" if int(head_width) == 0 else "MLP head"
    return f"{backbone} / {mode} / {head}"


@dataclass(frozen=True)
class _Dimension:
    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def suggest(self, trial: optuna.Trial) -> Any:
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None  # guaranteed by _parse_range
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def including(self, value: Any) -> tuple[_Dimension, str]:
        """This dimension widened to contain ``value``, and a note saying how ("" if unchanged)."""
        if self.choices is not None:
            if value in self.choices:
                return self, ""
            return replace(self, choices=(*self.choices, value)), f"added choice {value}"
        assert self.low is not None and self.high is not None  # guaranteed by _parse_range
        low, high = min(self.low, value), max(self.high, value)
        if self.step is not None and abs((k := (value - self.low) / self.step) - round(k)) > 1e-6:
            raise ConfigError(f"The baseline recipe needs {self.name}={value}, which is not on the grid of "
                              f"{self.as_dict()}; add it to the space or pass --no-baseline.")
        if (low, high) == (self.low, self.high):
            return self, ""
        note = f"range widened from [{self.low:g}, {self.high:g}] to [{low:g}, {high:g}]"
        return replace(self, low=low, high=high), note

    def as_dict(self) -> dict[str, Any]:
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


@dataclass(frozen=True)
class SearchSpace:
    """The strategies a study samples from.

    Build one with :func:`load_search_space` (a YAML file, a bundled name or a mapping).

    Attributes:
        dimensions: The four dimensions, keyed by name.
        description: Free text from the file.
        source: Where the space was read from (path or ``"<mapping>"``).
    """

    dimensions: Mapping[str, _Dimension]
    description: str = ""
    source: str = "<mapping>"

    @property
    def backbones(self) -> list[str]:
        """The backbone names the space may sample, in file order."""
        choices = self.dimensions["backbone"].choices
        return [str(c) for c in (choices or ())]

    def suggest(self, trial: optuna.Trial) -> Strategy:
        """Sample one strategy through ``trial.suggest_*`` (works with ``optuna.trial.FixedTrial``).

        Args:
            trial: The Optuna trial to sample with.

        Returns:
            The sampled :class:`Strategy`.
        """
        values = {name: self.dimensions[name].suggest(trial) for name in _DIMENSIONS}
        return Strategy(
            backbone=str(values["backbone"]),
            freeze_depth=float(values["freeze_depth"]),
            head_width=int(values["head_width"]),
            learning_rate=float(values["learning_rate"]),
        )

    def baseline(self) -> Strategy:
        """The :data:`BASELINE_RECIPE` on this space's first backbone."""
        return Strategy(backbone=self.backbones[0], freeze_depth=float(BASELINE_RECIPE["freeze_depth"]),
                        head_width=int(BASELINE_RECIPE["head_width"]),
                        learning_rate=float(BASELINE_RECIPE["learning_rate"]))

    def including(self, strategy: Strategy) -> tuple[SearchSpace, list[str]]:
        """Widen the space just enough to contain ``strategy`` (the baseline recipe).

        Choices get the missing value appended; a range gets its bound moved.

        Args:
            strategy: The strategy the space must contain.

        Returns:
            ``(space, changes)``: the widened space (``self`` when nothing changed) and one line per
            change, e.g. ``"head_width: added choice 1024"``.

        Raises:
            ConfigError: A stepped range cannot reach the value on its grid.
        """
        dims = dict(self.dimensions)
        changes: list[str] = []
        for name, value in strategy.as_dict().items():
            dim, note = dims[name].including(value)
            if note:
                dims[name] = dim
                changes.append(f"{name}: {note}")
        if not changes:
            return self, []
        return SearchSpace(dimensions=dims, description=self.description, source=self.source), changes

    def as_dict(self) -> dict[str, Any]:
        """The canonical form of the space, used in the study fingerprint."""
        return {name: self.dimensions[name].as_dict() for name in _DIMENSIONS}

    def to_json(self) -> str:
        """The canonical form as sorted JSON (stable across key order in the file)."""
        return json.dumps(self.as_dict(), sort_keys=True)


def bundled_spaces() -> dict[str, Path]:
    """Map the names of the spaces shipped with autotransfer to their files.

    Looks in the installed package (``autotransfer/search_spaces``, wheel installs) and in
    the repository's top-level ``search_spaces/`` (editable installs).
    """
    here = Path(__file__).resolve().parent
    found: dict[str, Path] = {}
    for folder in (here.parent / "search_spaces", here / "search_spaces"):
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")):
                found.setdefault(path.stem, path)
    return found


def load_search_space(space: str | Path | Mapping[str, Any] | SearchSpace) -> SearchSpace:
    """Read and validate a search space.

    Args:
        space: A :class:`SearchSpace` (returned as is), a mapping in the YAML layout, a path to
            a YAML file, or the name of a bundled space (``"default"``, ``"small"``, ``"demo"``).

    Returns:
        The validated space.

    Raises:
        ConfigError: The file is missing or not valid YAML, or a key or value is not accepted;
            the message names the key, the value and what would be accepted.
    """
    if isinstance(space, SearchSpace):
        return space
    if isinstance(space, Mapping):
        return _parse(space, "<mapping>")
    bundled = bundled_spaces()
    path = Path(space)
    if not path.exists() and str(space) in bundled:
        path = bundled[str(space)]
    if not path.is_file():
        raise ConfigError(
            describe("space", f"a YAML file or one of the bundled names {sorted(bundled)}", str(space))
        )
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise ConfigError(f"The search space {str(path)!r} is not valid YAML: {err}") from err
    return _parse(raw, str(path))


def _parse(raw: Any, source: str) -> SearchSpace:
    if not isinstance(raw, Mapping):
        raise ConfigError(describe(f"{source}", "a mapping of dimension names to values", raw))
    unknown = [k for k in raw if k not in _TOP_LEVEL]
    if unknown:
        raise ConfigError(
            f"Unknown key {unknown[0]!r} in search space {source!r}; accepted keys: {list(_TOP_LEVEL)}."
        )
    missing = [k for k in _DIMENSIONS if k not in raw]
    if missing:
        raise ConfigError(f"Search space {source!r} lacks the dimension {missing[0]!r}; "
                          f"it needs all of {list(_DIMENSIONS)}.")
    dims = {
        "backbone": _parse_choices("backbone", raw["backbone"], _check_backbone),
        "freeze_depth": _parse_fraction(raw["freeze_depth"]),
        "head_width": _parse_choices("head_width", raw["head_width"], _check_width),
        "learning_rate": _parse_range("learning_rate", raw["learning_rate"], log=True),
    }
    return SearchSpace(dimensions=dims, description=str(raw.get("description", "")), source=source)


def _as_spec(name: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, list):
        return {"choices": value}
    if isinstance(value, Mapping):
        return value
    raise ConfigError(describe(name, "a list of choices or a mapping with 'choices' or 'low'/'high'", value))


def _parse_choices(name: str, value: Any, check: Any) -> _Dimension:
    spec = _as_spec(name, value)
    if set(spec) != {"choices"}:
        raise ConfigError(describe(name, "a list of choices (or {choices: [...]})", dict(spec)))
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(describe(f"{name}.choices", "a non-empty list", choices))
    if len(set(map(str, choices))) != len(choices):
        raise ConfigError(describe(f"{name}.choices", "a list without repeated values", choices))
    return _Dimension(name, choices=tuple(check(name, c) for c in choices))


def _parse_fraction(value: Any) -> _Dimension:
    spec = _as_spec("freeze_depth", value)
    if "choices" in spec:
        return _parse_choices("freeze_depth", value, _check_fraction)
    dim = _parse_range("freeze_depth", spec, log=False)
    for bound in (dim.low, dim.high):
        _check_fraction("freeze_depth", bound)
    return dim


def _parse_range(name: str, value: Any, *, log: bool) -> _Dimension:
    spec = _as_spec(name, value)
    allowed = {"low", "high", "log"} if log else {"low", "high", "step"}
    extra = set(spec) - allowed
    if extra or not {"low", "high"} <= set(spec):
        raise ConfigError(describe(name, f"a mapping with keys {sorted(allowed)} ('low' and 'high' "
                                         "required)", dict(spec)))
    low, high = (_check_number(f"{name}.{k}", spec[k]) for k in ("low", "high"))
    if log and spec.get("log", True) is not True:
        raise ConfigError(describe(f"{name}.log", "true (the learning rate is sampled log-uniformly)",
                                   spec["log"]))
    if log and low <= 0:
        raise ConfigError(describe(f"{name}.low", "a positive number (log-uniform range)", low))
    if not low < high:
        raise ConfigError(describe(f"{name}.high", f"greater than low={low}", high))
    step = spec.get("step")
    if step is not None:
        step = _check_number(f"{name}.step", step)
        if step <= 0 or step > high - low:
            raise ConfigError(describe(f"{name}.step", f"in (0, {high - low}]", step))
    return _Dimension(name, low=low, high=high, step=step, log=log)


def _check_number(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(describe(name, "a finite number", value))
    return float(value)


def _check_fraction(name: str, value: Any) -> float:
    number = _check_number(name, value)
    if not 0.0 <= number <= 1.0:
        raise ConfigError(describe(name, "a fraction in [0, 1] (0 = full fine-tuning, 1 = linear probe)",
                                   value))
    return number


def _check_width(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(describe(name, "a non-negative integer (0 = linear head, else MLP hidden width)",
                                   value))
    return value


def _check_backbone(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(describe(name, "a zoo or timm model name (non-empty string)", value))
    return value

