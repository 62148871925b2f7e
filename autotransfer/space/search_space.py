"""Search spaces: which transfer strategies a study may sample, read from YAML.

A space file names the dimensions declared in :mod:`autotransfer.space.dimensions`: the four
first ones are required, the recipe dimensions optional (omitted, they keep their default)::

    description: free text                       # optional
    backbone: [mobilenetv2_100.tf2_in1k, ...]     # zoo or timm names (choices)
    freeze_depth: {low: 0.0, high: 1.0, step: 0.25}   # or a list of choices in [0, 1]
    head_width: [0, 256]                          # 0 = linear head, else MLP hidden width
    learning_rate: {low: 1.0e-4, high: 1.0e-2}    # log-uniform
    weight_decay: [0.0, 0.01, 0.05]               # optional; default 0.01

A list is shorthand for ``{choices: [...]}``. Files are read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import optuna
import yaml

from autotransfer.errors import ConfigError, describe
from autotransfer.space.dimensions import DIMENSIONS, Domain, parse_domain
from autotransfer.space.strategy import BASELINE_RECIPE, STRONG_BASELINE_RECIPE, Strategy

__all__ = ["SearchSpace", "bundled_spaces", "load_search_space"]


@dataclass(frozen=True)
class SearchSpace:
    """The strategies a study samples from.

    Build one with :func:`load_search_space` (a YAML file, a bundled name or a mapping).

    Attributes:
        dimensions: The domain of every dimension the space names, keyed by name.
        description: Free text from the file.
        source: Where the space was read from (path or ``"<mapping>"``).
    """

    dimensions: Mapping[str, Domain]
    description: str = ""
    source: str = "<mapping>"

    @property
    def backbones(self) -> list[str]:
        """The backbone names the space may sample, in file order."""
        choices = self.dimensions["backbone"].choices
        return [str(c) for c in (choices or ())]

    def suggest(self, trial: optuna.Trial) -> Strategy:
        """Sample one strategy through ``trial.suggest_*`` (works with ``optuna.trial.FixedTrial``).

        Dimensions are sampled in declaration order; one whose ``active`` condition fails given
        the values before it is not sampled (it keeps its default).

        Args:
            trial: The Optuna trial to sample with.

        Returns:
            The sampled :class:`~autotransfer.space.strategy.Strategy`.
        """
        values: dict[str, Any] = {}
        for dim in DIMENSIONS.values():
            if dim.name in self.dimensions and dim.is_active(values):
                values[dim.name] = dim.convert(self.dimensions[dim.name].suggest(trial))
        return Strategy.from_params(values)

    def distributions(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The Optuna distribution of every dimension the space names."""
        return {name: domain.distribution() for name, domain in self.dimensions.items()}

    def baseline(self) -> Strategy:
        """The :data:`~autotransfer.space.strategy.BASELINE_RECIPE` on this space's first backbone.

        Recipe dimensions the space names take their defaults, so the baseline trial trains the
        textbook recipe whatever else the space searches; a dimension whose default is None (the
        input size: the backbone's own) takes the space's largest choice, since a trial must sample it.
        """
        values: dict[str, Any] = {"backbone": self.backbones[0], **BASELINE_RECIPE}
        for dim in DIMENSIONS.values():
            if dim.name in self.dimensions and dim.name not in values and dim.is_active(values):
                values[dim.name] = dim.default if dim.default is not None else self._largest(dim.name)
        return Strategy.from_params(values)

    def strong_baseline(self) -> Strategy:
        """:data:`~autotransfer.space.strategy.STRONG_BASELINE_RECIPE` on this space's first backbone.

        It runs outside the space, so it need not be a point of it; a dimension the recipe does not set
        keeps its default (the input size: the space's largest choice when the space has one).
        """
        values: dict[str, Any] = {"backbone": self.backbones[0], **STRONG_BASELINE_RECIPE}
        if "input_size" in self.dimensions:
            values["input_size"] = self._largest("input_size")
        return Strategy.from_params(values)

    def _largest(self, name: str) -> Any:
        domain = self.dimensions[name]
        return max(domain.choices) if domain.choices is not None else domain.high

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

    def with_backbones(self, names: list[str]) -> SearchSpace:
        """The same space with its backbone choices narrowed to ``names`` (in the space's order).

        Raises:
            ConfigError: ``names`` is empty or holds a backbone the space does not.
        """
        unknown = [n for n in names if n not in self.backbones]
        if not names or unknown:
            raise ConfigError(describe("backbones", f"a non-empty subset of {self.backbones}", names))
        kept = tuple(b for b in self.backbones if b in names)
        dims = {**self.dimensions, "backbone": replace(self.dimensions["backbone"], choices=kept)}
        return SearchSpace(dimensions=dims, description=self.description, source=self.source)

    def as_dict(self) -> dict[str, Any]:
        """The canonical form of the space, used in the study fingerprint (only the dimensions it names)."""
        return {name: self.dimensions[name].as_dict() for name in DIMENSIONS if name in self.dimensions}

    def to_json(self) -> str:
        """The canonical form as sorted JSON (stable across key order in the file)."""
        return json.dumps(self.as_dict(), sort_keys=True)


def bundled_spaces() -> dict[str, Path]:
    """Map the names of the spaces shipped with autotransfer to their files.

    Looks in the installed package (``autotransfer/search_spaces``, wheel installs) and in
    the repository's top-level ``search_spaces/`` (editable installs).
    """
    here = Path(__file__).resolve().parents[1]
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
    accepted = [*DIMENSIONS, "description"]
    unknown = [k for k in raw if k not in accepted]
    if unknown:
        raise ConfigError(f"Unknown key {unknown[0]!r} in search space {source!r}; accepted keys: {accepted}.")
    required = [name for name, dim in DIMENSIONS.items() if dim.required]
    missing = [k for k in required if k not in raw]
    if missing:
        raise ConfigError(f"Search space {source!r} lacks the dimension {missing[0]!r}; it needs all of {required}.")
    dims = {name: parse_domain(dim, raw[name]) for name, dim in DIMENSIONS.items() if name in raw}
    return SearchSpace(dimensions=dims, description=str(raw.get("description", "")), source=source)
