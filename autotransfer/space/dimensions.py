"""Strategy dimensions, each declared once: every consumer iterates :data:`DIMENSIONS`.

A :class:`Dimension` says everything the product needs to know about one knob of a strategy:
its name and label, how a search-space file gives it (:class:`Domain`: choices or a range, with
validation), the Optuna distribution it is sampled from, the value used when a space omits it
(then nothing is stored for it and the study's configuration fingerprint is unchanged), when it
is active (it may depend on dimensions declared before it), and how its value enters the training
:class:`Recipe`. The search space, the objective, refit, the leaderboard, the report, the status
line, the model file and the estimator read dimensions from here, so a new one is one declaration.

The four first dimensions (``backbone``, ``freeze_depth``, ``head_width``, ``learning_rate``) are
required in every space; the recipe dimensions after them are optional.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from autotransfer.errors import ConfigError, describe

__all__ = ["AUGMENTATIONS", "DIMENSIONS", "REQUIRED", "Dimension", "Domain", "Recipe", "declared", "parse_domain"]

REQUIRED: Any = object()  # the default of a dimension every space must give


@dataclass(frozen=True)
class Recipe:
    """How a strategy trains beyond its backbone, freeze depth, head and learning rate.

    Built from a strategy by folding every dimension's ``enter`` over the default recipe, and
    read by the trainer and the model builder. Each field is plain data or a callable, so a
    recipe is cheap to build and needs no PyTorch until it is used.

    Attributes:
        weight_decay: AdamW weight decay (0.01, PyTorch's AdamW default).
        model_kwargs: Extra ``timm.create_model`` keyword arguments (e.g. ``drop_path_rate``).
        param_groups: Callables ``(module, groups) -> groups`` applied in turn to the optimizer's
            parameter groups (``timm.optim.param_groups_weight_decay`` output: dicts with
            ``params``, ``weight_decay``), e.g. to scale rates per layer.
        loss: Factory of the training loss module (``() -> nn.Module`` mapping logits ``(B, K)`` and
            labels ``(B,)`` to a scalar); None: cross-entropy.
        extra_loss: Callables ``(module) -> scalar tensor`` added to every training step's loss
            (a penalty on the weights).
        train_transform: ``timm.data.create_transform`` keyword arguments that replace the default
            training augmentation (random resized crop at scale 0.5-1, horizontal flip).
        augment_frozen: Whether strategies with a frozen part augment too; then their pooled
            features and frozen-prefix activations change with every epoch and are not cached.
        label_smoothing: Cross-entropy label smoothing in [0, 1) (0: none).
        warmup: Linear learning-rate warm-up from 0, as a fraction of all training steps (0: none).
        layer_decay: Layer-wise learning-rate decay: block group ``i`` of ``n`` trains at
            ``lr * layer_decay ** (n - i)``, the head at ``lr`` (1.0: none).
        lp_ft: Linear probe, then fine-tune: fit the head on cached pooled features before training
            a partly or wholly trainable backbone.
        l2_sp: L2-SP strength ``alpha`` of the penalty ``alpha * ||w - w0||^2`` towards the pretrained
            backbone weights (0: none; then the backbone's decoupled weight decay is 0).
        augmentation: Training augmentation of images: ``"none"``, ``"crop_flip"`` (random resized
            crop at scale 0.5-1 and a horizontal flip), ``"rand_augment"`` or ``"trivial_augment"``
            (each after the crop and flip).
        mixup: Mixup's Beta(alpha, alpha) parameter (0: no mixup).
        cutmix: CutMix's Beta(alpha, alpha) parameter (0: no CutMix).
        input_size: Side in pixels of the square input the backbone sees (None: its pretrained size).
        grad_clip: Gradient-norm clipping threshold (0: none).
    """

    weight_decay: float = 0.01
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    param_groups: tuple[Callable[[Any, list[dict[str, Any]]], list[dict[str, Any]]], ...] = ()
    loss: Callable[[], Any] | None = None
    extra_loss: tuple[Callable[[Any], Any], ...] = ()
    train_transform: Mapping[str, Any] = field(default_factory=dict)
    augment_frozen: bool = False
    label_smoothing: float = 0.0
    warmup: float = 0.0
    layer_decay: float = 1.0
    lp_ft: bool = False
    l2_sp: float = 0.0
    augmentation: str = "crop_flip"
    mixup: float = 0.0
    cutmix: float = 0.0
    input_size: int | None = None
    grad_clip: float = 0.0

    @property
    def mixes(self) -> bool:
        """Whether training batches are mixed (mixup or CutMix), with soft targets."""
        return self.mixup > 0 or self.cutmix > 0

    @property
    def augments(self) -> bool:
        """Whether the recipe changes training images at random (augmentation or mixing)."""
        return self.augmentation != "none" or self.mixes

    def data_config(self, data_config: Mapping[str, Any]) -> dict[str, Any]:
        """The backbone's timm data config with the recipe's input size (unchanged without one)."""
        config = dict(data_config)
        if self.input_size is not None:
            config["input_size"] = (int(config["input_size"][0]), self.input_size, self.input_size)
        return config


@dataclass(frozen=True)
class Domain:
    """The values a search space allows for one dimension: a list of choices or a numeric range.

    Attributes:
        name: The dimension.
        choices: The allowed values, or None for a range.
        low: Lower bound of a range.
        high: Upper bound of a range.
        step: Grid step of a range (None: continuous).
        log: Sample the range log-uniformly.
    """

    name: str
    choices: tuple[Any, ...] | None = None
    low: float | None = None
    high: float | None = None
    step: float | None = None
    log: bool = False

    def distribution(self) -> BaseDistribution:
        """The Optuna distribution a trial samples this dimension from."""
        if self.choices is not None:
            return CategoricalDistribution(list(self.choices))
        assert self.low is not None and self.high is not None  # guaranteed by parse_domain
        return FloatDistribution(self.low, self.high, step=self.step, log=self.log)

    def suggest(self, trial: optuna.Trial) -> Any:
        """Sample a value through ``trial.suggest_*`` (works with ``optuna.trial.FixedTrial``)."""
        if self.choices is not None:
            return trial.suggest_categorical(self.name, list(self.choices))
        assert self.low is not None and self.high is not None  # guaranteed by parse_domain
        return trial.suggest_float(self.name, self.low, self.high, step=self.step, log=self.log)

    def including(self, value: Any) -> tuple[Domain, str]:
        """This domain widened to contain ``value``, and a note saying how ("" if unchanged).

        Raises:
            ConfigError: A stepped range cannot reach ``value`` on its grid.
        """
        if self.choices is not None:
            if value in self.choices:
                return self, ""
            return replace(self, choices=(*self.choices, value)), f"added choice {value}"
        assert self.low is not None and self.high is not None  # guaranteed by parse_domain
        low, high = min(self.low, value), max(self.high, value)
        if self.step is not None and abs((k := (value - self.low) / self.step) - round(k)) > 1e-6:
            raise ConfigError(f"The baseline recipe needs {self.name}={value}, which is not on the grid of "
                              f"{self.as_dict()}; add it to the space or pass --no-baseline.")
        if (low, high) == (self.low, self.high):
            return self, ""
        note = f"range widened from [{self.low:g}, {self.high:g}] to [{low:g}, {high:g}]"
        return replace(self, low=low, high=high), note

    def as_dict(self) -> dict[str, Any]:
        """The canonical form stored in the study's configuration."""
        if self.choices is not None:
            return {"choices": list(self.choices)}
        out: dict[str, Any] = {"low": self.low, "high": self.high}
        if self.step is not None:
            out["step"] = self.step
        if self.log:
            out["log"] = True
        return out


Check = Callable[[str, Any], Any]  # (name, value) -> the checked value, or raise ConfigError


@dataclass(frozen=True)
class Dimension:
    """One strategy dimension, declared once.

    Attributes:
        name: Key in space files, Optuna parameter name, ``params_<name>`` leaderboard column.
        label: What the leaderboard header, report and status call it (``"freeze depth"``).
        check: Validates one value (a choice or a bound) and returns it converted.
        kind: The Python type of a sampled value (``str``, ``int`` or ``float``).
        default: The value when a space omits the dimension (:data:`REQUIRED`: a space must give it).
        ranges: The range keys a space may use: ``("low", "high", "step")``, ``("low", "high", "log")``,
            ``("low", "high", "step", "log")``, or ``()`` for choices only.
        log: Ranges are sampled log-uniformly (``log`` may then only be true).
        choices: Whether a space may give a list of choices (else only a range).
        active: Given the values sampled before it, whether the dimension applies (None: always);
            an inactive dimension is not sampled or stored and keeps its default.
        enter: ``(recipe, value) -> recipe``: how the value enters the training recipe (None: the
            value is read by the network builder itself).
        short: Abbreviation in the command line's progress lines.
        source: Where the dimension and its default come from (a paper or library).
    """

    name: str
    label: str
    check: Check
    kind: type
    default: Any = REQUIRED
    ranges: tuple[str, ...] = ()
    log: bool = False
    choices: bool = True
    active: Callable[[Mapping[str, Any]], bool] | None = None
    enter: Callable[[Recipe, Any], Recipe] | None = None
    short: str = ""
    source: str = ""

    @property
    def required(self) -> bool:
        """Whether every space must give this dimension."""
        return self.default is REQUIRED

    def is_active(self, values: Mapping[str, Any]) -> bool:
        """Whether the dimension applies, given the values sampled before it."""
        return self.active is None or bool(self.active(values))

    def convert(self, value: Any) -> Any:
        """A sampled or stored value as :attr:`kind`."""
        return self.kind(value)

    def format(self, value: Any) -> str:
        """The value as progress and status lines print it (``1.0e-03`` for log-scaled numbers)."""
        if value is None:
            return "-"
        if self.log and isinstance(value, float):
            return f"{value:.1e}"
        return f"{value:.2f}" if isinstance(value, float) else str(value)


def _as_spec(name: str, value: Any) -> Mapping[str, Any]:
    if isinstance(value, list):
        return {"choices": value}
    if isinstance(value, Mapping):
        return value
    raise ConfigError(describe(name, "a list of choices or a mapping with 'choices' or 'low'/'high'", value))


def parse_domain(dim: Dimension, value: Any) -> Domain:
    """Validate a space file's entry for ``dim`` (a list, ``{choices: [...]}`` or a range mapping).

    Raises:
        ConfigError: The entry or one of its values is not accepted; the message names the key,
            the value and what would be accepted.
    """
    spec = _as_spec(dim.name, value)
    if not dim.ranges or ("choices" in spec and dim.choices):
        return _parse_choices(dim, spec)
    return _parse_range(dim, spec)


def _parse_choices(dim: Dimension, spec: Mapping[str, Any]) -> Domain:
    if set(spec) != {"choices"}:
        raise ConfigError(describe(dim.name, "a list of choices (or {choices: [...]})", dict(spec)))
    choices = spec["choices"]
    if not isinstance(choices, list) or not choices:
        raise ConfigError(describe(f"{dim.name}.choices", "a non-empty list", choices))
    if len(set(map(str, choices))) != len(choices):
        raise ConfigError(describe(f"{dim.name}.choices", "a list without repeated values", choices))
    return Domain(dim.name, choices=tuple(dim.check(dim.name, c) for c in choices))


def _parse_range(dim: Dimension, spec: Mapping[str, Any]) -> Domain:
    name, allowed = dim.name, set(dim.ranges)
    extra = set(spec) - allowed
    if extra or not {"low", "high"} <= set(spec):
        raise ConfigError(describe(name, f"a mapping with keys {sorted(allowed)} ('low' and 'high' "
                                         "required)", dict(spec)))
    low, high = (float(dim.check(f"{name}.{k}", check_number(f"{name}.{k}", spec[k]))) for k in ("low", "high"))
    log = bool(spec.get("log", dim.log))
    if dim.log and spec.get("log", True) is not True:
        raise ConfigError(describe(f"{name}.log", f"true (the {dim.label} is sampled log-uniformly)", spec["log"]))
    if log and low <= 0:
        raise ConfigError(describe(f"{name}.low", "a positive number (log-uniform range)", low))
    if not low < high:
        raise ConfigError(describe(f"{name}.high", f"greater than low={low}", high))
    step = spec.get("step")
    if step is not None:
        step = check_number(f"{name}.step", step)
        if step <= 0 or step > high - low:
            raise ConfigError(describe(f"{name}.step", f"in (0, {high - low}]", step))
    return Domain(name, low=low, high=high, step=step, log=log)


def check_number(name: str, value: Any) -> float:
    """``value`` as a float; ConfigError unless it is a finite number."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(describe(name, "a finite number", value))
    return float(value)


def _check_backbone(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(describe(name, "a zoo or timm model name (non-empty string)", value))
    return value


def _check_width(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(describe(name, "a non-negative integer (0 = linear head, else MLP hidden width)", value))
    return value


def number_check(expected: str, accepted: Callable[[float], bool]) -> Check:
    """A :attr:`Dimension.check` for numbers: finite, and ``accepted``; else ConfigError saying ``expected``."""
    def check(name: str, value: Any) -> float:
        number = check_number(name, value)
        if not accepted(number):
            raise ConfigError(describe(name, expected, value))
        return number

    return check


_check_fraction = number_check("a fraction in [0, 1] (0 = full fine-tuning, 1 = linear probe)", lambda x: 0 <= x <= 1)
_check_positive = number_check("a positive number", lambda x: x > 0)
_check_non_negative = number_check("a number >= 0", lambda x: x >= 0)
_check_rate = number_check("a number in [0, 1)", lambda x: 0 <= x < 1)
_check_decay = number_check("a factor in (0, 1] (1 = no layer-wise decay)", lambda x: 0 < x <= 1)

AUGMENTATIONS = ("none", "crop_flip", "rand_augment", "trivial_augment")
"""The ``augmentation`` choices (:attr:`Recipe.augmentation`)."""


def _check_bool(name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(describe(name, "true or false", value))
    return value


def _check_augmentation(name: str, value: Any) -> str:
    if value not in AUGMENTATIONS:
        raise ConfigError(describe(name, f"one of {list(AUGMENTATIONS)}", value))
    return str(value)


def _check_input_size(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 32 <= value <= 1024:
        raise ConfigError(describe(name, "an image side in pixels, an integer from 32 to 1024", value))
    return value


def _trains_backbone(values: Mapping[str, Any]) -> bool:
    """Active when some backbone block group trains (freeze depth below 1)."""
    return float(values.get("freeze_depth", 1.0)) < 1.0


def _augments(values: Mapping[str, Any]) -> bool:
    """Active when the strategy trains on augmented images: the whole backbone trains, or the space
    opts strategies with a frozen part in (``augment_frozen``)."""
    return float(values.get("freeze_depth", 1.0)) == 0.0 or bool(values.get("augment_frozen", False))


def _setting(field_name: str, convert: Callable[[Any], Any]) -> Callable[[Recipe, Any], Recipe]:
    """An ``enter`` that sets one :class:`Recipe` field to the converted value."""
    return lambda recipe, value: replace(recipe, **{field_name: convert(value)})


def _drop_path(recipe: Recipe, value: Any) -> Recipe:
    if not value:  # the default builds the model exactly as before the dimension existed
        return recipe
    return replace(recipe, model_kwargs={**recipe.model_kwargs, "drop_path_rate": float(value)})


DIMENSIONS: dict[str, Dimension] = {d.name: d for d in (
    Dimension("backbone", "backbone", _check_backbone, str, short="",
              source="a timm model name or a local zoo entry"),
    Dimension("freeze_depth", "freeze depth", _check_fraction, float, ranges=("low", "high", "step"), short="freeze",
              source="fraction of timm's block groups frozen from the stem (group_matcher, coarse=False)"),
    Dimension("head_width", "head width", _check_width, int, short="head",
              source="0: linear head; else a one-hidden-layer ReLU MLP (timm.layers.Mlp)"),
    Dimension("learning_rate", "learning rate", _check_positive, float, ranges=("low", "high", "log"), log=True,
              choices=False, short="lr", source="peak AdamW learning rate, cosine-decayed per step (timm.scheduler)"),
    Dimension("weight_decay", "weight decay", _check_non_negative, float, default=0.01,
              ranges=("low", "high", "step", "log"), short="wd",
              enter=lambda recipe, value: replace(recipe, weight_decay=float(value)),
              source="AdamW decoupled weight decay (Loshchilov and Hutter, ICLR 2019); default 0.01, "
                     "PyTorch's AdamW default; not applied to biases and norms (timm.optim)"),
    Dimension("lp_ft", "LP-FT", _check_bool, bool, default=False, active=_trains_backbone, short="lpft",
              enter=_setting("lp_ft", bool),
              source="linear probe, then fine-tune (Kumar et al., ICLR 2022): the head is fitted on cached "
                     "pooled train features before the backbone trains"),
    Dimension("layer_decay", "layer-wise LR decay", _check_decay, float, default=1.0, ranges=("low", "high", "step"),
              active=_trains_backbone, short="lld", enter=_setting("layer_decay", float),
              source="block group i of n at lr * decay^(n - i), the head at lr (BEiT, Bao et al., ICLR 2022; "
                     "0.65-0.75 in MAE, He et al., CVPR 2022); groups are timm's block groups"),
    Dimension("l2_sp", "L2-SP", _check_non_negative, float, default=0.0, ranges=("low", "high", "step", "log"),
              active=_trains_backbone, short="l2sp", enter=_setting("l2_sp", float),
              source="alpha * ||w - w0||^2 towards the pretrained weights, norms and biases excluded; the "
                     "backbone then has no weight decay (Li, Grandvalet and Davoine, ICML 2018)"),
    Dimension("drop_path", "drop path", _check_rate, float, default=0.0, ranges=("low", "high", "step"),
              active=_trains_backbone, short="dp", enter=_drop_path,
              source="stochastic depth (Huang et al., ECCV 2016), timm's drop_path_rate"),
    Dimension("label_smoothing", "label smoothing", _check_rate, float, default=0.0, ranges=("low", "high", "step"),
              short="ls", enter=_setting("label_smoothing", float),
              source="Szegedy et al., CVPR 2016; torch.nn.CrossEntropyLoss(label_smoothing), and timm.data.Mixup's "
                     "for mixed batches"),
    Dimension("warmup", "warm-up", _check_rate, float, default=0.0, ranges=("low", "high", "step"), short="wu",
              enter=_setting("warmup", float),
              source="linear warm-up from 0 over this fraction of all steps (Goyal et al., 2017), "
                     "timm.scheduler's warmup"),
    Dimension("grad_clip", "gradient clipping", _check_non_negative, float, default=0.0,
              ranges=("low", "high", "step"), short="clip", enter=_setting("grad_clip", float),
              source="clip the gradient's global L2 norm (torch.nn.utils.clip_grad_norm_); 0: none"),
    Dimension("augment_frozen", "augment frozen", _check_bool, bool, default=False, short="augfz",
              enter=_setting("augment_frozen", bool),
              source="opt strategies with a frozen part into augmentation (they then train on images, uncached)"),
    Dimension("augmentation", "augmentation", _check_augmentation, str, default="crop_flip", active=_augments,
              short="aug", enter=_setting("augmentation", str),
              source="crop_flip: timm random resized crop (scale 0.5-1) and flip; rand_augment: timm "
                     "'rand-m9-mstd0.5-inc1' (Cubuk et al., 2020); trivial_augment: torchvision "
                     "TrivialAugmentWide (Muller and Hutter, ICCV 2021)"),
    Dimension("mixup", "mixup", _check_non_negative, float, default=0.0, ranges=("low", "high", "step"),
              active=_augments, short="mix", enter=_setting("mixup", float),
              source="mixup alpha (Zhang et al., ICLR 2018), timm.data.Mixup"),
    Dimension("cutmix", "CutMix", _check_non_negative, float, default=0.0, ranges=("low", "high", "step"),
              active=_augments, short="cut", enter=_setting("cutmix", float),
              source="CutMix alpha (Yun et al., ICCV 2019), timm.data.Mixup"),
    Dimension("input_size", "input size", _check_input_size, int, default=None, short="px",
              enter=lambda recipe, value: recipe if value is None else replace(recipe, input_size=int(value)),
              source="square input side in pixels; the eval resize and crop follow it (timm data config); "
                     "default: the backbone's pretrained size"),
)}
"""Every declared dimension, in sampling order (a dimension's ``active`` sees those before it)."""


@contextmanager
def declared(dimension: Dimension) -> Iterator[Dimension]:
    """Declare ``dimension`` for the duration of a ``with`` block (an extension point for tests and plugins).

    Declarations are per process: worker processes (``--workers N``) see only the built-in ones.

    Raises:
        ConfigError: A dimension of that name is already declared.
    """
    if dimension.name in DIMENSIONS:
        raise ConfigError(describe("dimension", f"a name not already declared ({sorted(DIMENSIONS)})",
                                   dimension.name))
    DIMENSIONS[dimension.name] = dimension
    try:
        yield dimension
    finally:
        DIMENSIONS.pop(dimension.name, None)
