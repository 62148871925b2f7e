"""A strategy (one point of the space), its strategy family, and the textbook baseline recipe."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from autotransfer.errors import ConfigError
from autotransfer.space.dimensions import DIMENSIONS, Recipe

__all__ = ["BASELINE_RECIPE", "CORE", "STRONG_BASELINE_RECIPE", "Strategy", "family_label", "strategy_family",
           "transfer_mode"]

CORE = ("backbone", "freeze_depth", "head_width", "learning_rate")  # required in every space

BASELINE_RECIPE: Mapping[str, float | int] = {"freeze_depth": 1.0, "head_width": 1024, "learning_rate": 1e-4}
"""The textbook transfer recipe: backbone frozen, a Dense(1024) ReLU head, learning rate 1e-4.

Source: the Keras Applications guide, "Fine-tune InceptionV3 on a new set of classes"
(``Dense(1024, activation='relu')`` on the pooled features of a frozen base; 1e-4 for the
fine-tuning stage). A study runs it as its first trial, on the space's first backbone, so the
report can show what the search gained over it; every other dimension keeps its default.
"""


STRONG_BASELINE_RECIPE: Mapping[str, float | int] = {
    "freeze_depth": 0.0, "head_width": 0, "learning_rate": 1e-4, "weight_decay": 1e-3, "layer_decay": 0.9,
    "warmup": 0.1, "grad_clip": 1.0}
"""AutoGluon's fixed image recipe: full fine-tuning with a linear head, AdamW at 1e-4, weight decay
1e-3, layer-wise learning-rate decay 0.9, cosine decay after a linear warm-up over 10% of the steps,
gradient-norm clipping at 1.

Source: AutoGluon's AutoMM defaults (``optimization.learning_rate: 1.0e-4``, ``optim_type: adamw``,
``weight_decay: 1.0e-3``, ``lr_choice: layerwise_decay``, ``lr_decay: 0.9``, ``lr_schedule:
cosine_decay``, ``warmup_steps: 0.1``, ``gradient_clip_algorithm: norm``, ``gradient_clip_val: 1``;
the "Customize AutoMM" tutorial). Left out: its top-3 checkpoint averaging (greedy soup) and early
stopping (patience 10), which need checkpoints and val checks within the budget; the epochs and batch
size are the study's, like every other trial's. A study runs it on the space's first backbone, outside
the sampled space (:mod:`autotransfer.study.strong_baseline`).
"""


@dataclass(frozen=True)
class Strategy:
    """One point of the search space: how to transfer one backbone.

    Attributes:
        backbone: Zoo entry or timm model name (``arch`` or ``arch.tag``).
        freeze_depth: Fraction of the backbone's block groups frozen, in [0, 1]:
            0.0 is full fine-tuning, 1.0 a linear probe.
        head_width: 0 for a linear head, else the hidden width of a one-hidden-layer MLP head.
        learning_rate: Peak AdamW learning rate (cosine-decayed over the budget).
        recipe_values: The recipe dimensions the trial sampled (``{"weight_decay": 0.05}``);
            a dimension absent here keeps its declared default.
    """

    backbone: str
    freeze_depth: float
    head_width: int
    learning_rate: float
    recipe_values: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> Strategy:
        """The strategy of a trial's Optuna ``params`` (converted to each dimension's type).

        Raises:
            ConfigError: A core dimension is missing, or a parameter names no declared dimension.
        """
        missing = [k for k in CORE if k not in params]
        unknown = [k for k in params if k not in DIMENSIONS]
        if missing or unknown:
            raise ConfigError(f"The parameters {dict(params)} are not a whole strategy: missing {missing}, "
                              f"not declared {unknown}.")
        try:
            core = {k: DIMENSIONS[k].convert(params[k]) for k in CORE}
        except (TypeError, ValueError) as err:
            raise ConfigError(f"The parameters {dict(params)} are not a strategy: {err}.") from err
        extra = {k: DIMENSIONS[k].convert(v) for k, v in params.items() if k not in CORE}
        return cls(**core, recipe_values=extra)

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.as_dict().items())))

    def as_dict(self) -> dict[str, Any]:
        """The strategy as a plain dict: the Optuna ``params`` of its trial (sampled dimensions only)."""
        return {"backbone": self.backbone, "freeze_depth": self.freeze_depth, "head_width": self.head_width,
                "learning_rate": self.learning_rate, **self.recipe_values}

    def value(self, name: str) -> Any:
        """The value of dimension ``name``: sampled, else its declared default."""
        params = self.as_dict()
        return params[name] if name in params else DIMENSIONS[name].default

    def recipe(self) -> Recipe:
        """The training recipe: every declared dimension's ``enter`` folded over the default :class:`Recipe`."""
        recipe = Recipe()
        for dim in DIMENSIONS.values():
            if dim.enter is not None:
                recipe = dim.enter(recipe, self.value(dim.name))
        return recipe

    @property
    def family(self) -> str:
        """The strategy family its freeze depth implies before the network is built (see :func:`strategy_family`)."""
        return strategy_family(self.backbone, self.freeze_depth, self.head_width)


def transfer_mode(frozen: float, total: float) -> str:
    """``"linear probe"`` (everything frozen), ``"full fine-tuning"`` (nothing) or ``"partial fine-tuning"``.

    Args:
        frozen: Block groups frozen (or a freeze depth, with ``total`` 1.0).
        total: Block groups in the backbone.
    """
    if frozen >= total:
        return "linear probe"
    return "full fine-tuning" if frozen <= 0 else "partial fine-tuning"


def family_label(backbone: str, mode: str, head_width: int) -> str:
    """``"<backbone> / <transfer mode> / <linear head | MLP head>"``, the family a person compares."""
    return f"{backbone} / {mode} / {'linear head' if int(head_width) == 0 else 'MLP head'}"


def strategy_family(backbone: str, freeze_depth: float, head_width: int) -> str:
    """Name the strategy family a freeze depth implies, e.g. ``"mobilenetv2_100 / linear probe / MLP head"``.

    This is the label before the network is built; a trial's family comes from the block groups
    it actually froze (:func:`autotransfer.storage.records.trial_family`), since the depth is rounded to
    whole groups (with 18 groups, 0.02 freezes none and 0.98 all of them).

    Args:
        backbone: Zoo or timm name.
        freeze_depth: Fraction of frozen block groups in [0, 1].
        head_width: 0 for a linear head, else MLP hidden width.
    """
    return family_label(backbone, transfer_mode(freeze_depth, 1.0), head_width)
