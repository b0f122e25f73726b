"""The ``tune.search`` block: dotted keys -> one distribution each, checked and planned without Ray.

Example::

    search:
      train.learning_rate: {loguniform: [1.0e-4, 1.0e-1]}
      model.embedding_dim: {choice: [32, 64]}
      model.features: {grid: [[image_stats, text_minilm], lvlm_tinyqwen2vl_mean]}   # or "image_stats+text_minilm"
      model.fusion: {grid: [concat, mean, attention]}

Grid keys are crossed into *grid points*; the other keys are *sampled* (``num_samples`` times per point). A key
applies only to the models it means something for: ``model.fusion`` where the trial's features are several and
the model fuses them (VBPR), ``model.features`` to content models, ``model.<key>`` to models that have that key.
After dropping what does not apply, points that coincide are one point, so ``features x fusion`` over FREEDOM
(one branch per modality) costs one trial per feature set, not one per fusion.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
from collections.abc import Mapping, Sequence
from typing import Any

from rmm.config.coerce import build_dataclass, dotted_fields, set_dotted, to_plain
from rmm.config.model import ModelConfig, build_model_config, model_to_dict
from rmm.config.schema import Config
from rmm.config.train import TrainConfig
from rmm.errors import ConfigError
from rmm.models.registry import model_spec

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
_RANGES = ("uniform", "loguniform", "randint")
_MODEL_KEYS = ("features", "fusion")
FEATURES_KEY = "model.features"
FUSION_KEY = "model.fusion"


@dataclasses.dataclass(frozen=True)
class ModelSpace:
    """What the sweep of one model entry searches.

    Attributes:
        points: the grid points (dotted key -> value), crossed, reduced to the keys that apply to the model,
            deduplicated and checked; ``({},)`` when nothing is gridded.
        sampled: the sampled distributions (dotted key -> ``{kind: values}``) that apply to the model.
    """

    points: tuple[dict[str, Any], ...]
    sampled: dict[str, dict[str, Any]]


def check_search_space(search: Mapping[str, Any], models: Sequence[ModelConfig]) -> None:
    """Raise ConfigError naming the key when a distribution, a searched key or a grid point is not valid for the
    tuned ``models``."""
    train_keys = set(dotted_fields(TrainConfig))
    for key, spec in search.items():
        where = f"tune.search.{key}"
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"{where} must be one distribution like {{choice: [...]}}; "
                              f"valid distributions: {', '.join(DISTRIBUTIONS)}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list, got {values!r}")
        if kind in _RANGES:
            _check_range(where, kind, values)
        section, _, name = key.partition(".")
        if section == "train" and name in train_keys:
            continue
        if section == "train" and name in TrainConfig.moved_keys:
            raise ConfigError(f"{where}: train.{name} moved to train.{TrainConfig.moved_keys[name]}; search that")
        if section == "model" and models:
            valid = {f.name for m in models for f in dataclasses.fields(m.params)} | set(_MODEL_KEYS)
            if name in valid:
                continue
            raise ConfigError(f"{where}: unknown model key {name!r}; valid keys: {', '.join(sorted(valid))}")
        raise ConfigError(f"{where}: searched keys must be train.<key> or model.<key>; "
                          f"valid train keys: {', '.join(sorted(train_keys))}")
    for model in models:
        model_space(search, model)


def _check_range(where: str, kind: str, values: list[Any]) -> None:
    if len(values) != 2 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"{where}: {kind} needs [low, high] numbers, got {values!r}")
    low, high = values
    if kind == "randint" and not all(isinstance(v, int) for v in values):
        raise ConfigError(f"{where}: randint needs integers [low, high) , got {values!r}")
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ConfigError(f"{where}: {kind} needs low < high{' and low > 0' if kind == 'loguniform' else ''}, "
                          f"got {values!r}")


def model_space(search: Mapping[str, Any], model: ModelConfig) -> ModelSpace:
    """The grid points and sampled distributions of ``model``'s sweep.

    Raises:
        ConfigError: a grid point or a choice value that the model rejects (an unknown fusion, a bad value).
    """
    fusions = model_spec(model.name).fusions
    searched_fusions = next(iter(search.get(FUSION_KEY, {"choice": []}).values()))
    unknown = [f for f in searched_fusions if fusions and f not in fusions]
    if unknown:  # checked even where the base features would make fusion moot
        raise ConfigError(f"tune.search.{FUSION_KEY}: {model.name} fusions are {list(fusions)}, got {unknown}")
    grid = {k: spec["grid"] for k, spec in search.items() if "grid" in spec}
    sampled = {k: dict(spec) for k, spec in search.items() if "grid" not in spec and _applies(model, k)}
    points: dict[str, dict[str, Any]] = {}
    for combination in itertools.product(*grid.values()):
        point = effective_params(model, dict(zip(grid, combination, strict=True)))
        _check_applies(model, point, f"tune.search grid point {dict(zip(grid, combination, strict=True))}")
        points.setdefault(json.dumps(point, sort_keys=True), point)
    for key, spec in sampled.items():
        kind, values = next(iter(spec.items()))
        for value in values if kind == "choice" else ():
            _check_applies(model, effective_params(model, {key: value}), f"tune.search.{key} value {value!r}")
    return ModelSpace(points=tuple(points.values()) or ({},), sampled=sampled)


def _check_applies(model: ModelConfig, params: Mapping[str, Any], where: str) -> None:
    """Build the model a point gives (train keys are checked per trial, against the run's train section)."""
    try:
        _apply(Config(model=(model,)), model, {k: v for k, v in params.items() if k.startswith("model.")})
    except ConfigError as err:
        raise ConfigError(f"{where} for model {model.label}: {err}") from err


def _applies(model: ModelConfig, key: str) -> bool:
    """Whether searching ``key`` can change ``model`` at all (``model.fusion`` is settled per trial, by the
    features)."""
    section, _, name = key.partition(".")
    if section != "model":
        return True
    spec = model_spec(model.name)
    if name == "features":
        return spec.uses_features
    if name == "fusion":  # never for a model with one branch per modality
        return spec.uses_features and bool(spec.fusions)
    return name in {f.name for f in dataclasses.fields(model.params)}


def features_value(value: Any) -> list[str]:
    """A ``model.features`` value as a list of feature names: ``[a, b]``, ``"a+b"`` or ``"a"``."""
    if isinstance(value, str):
        return [part for part in value.split("+") if part]
    return [str(v) for v in value]


def effective_params(model: ModelConfig, params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` reduced to the keys that change ``model``: no feature keys for an ID-only model, no fusion
    unless the trial's features are several and the model fuses them, no key the model does not have.
    ``model.features`` values become lists."""
    kept = {k: v for k, v in params.items() if _applies(model, k)}
    if FEATURES_KEY in kept:
        kept[FEATURES_KEY] = features_value(kept[FEATURES_KEY])
    features = kept.get(FEATURES_KEY, list(model.features))
    if FUSION_KEY in kept and not (len(features) > 1 and model_spec(model.name).fusions):
        del kept[FUSION_KEY]
    return kept


def apply_params(cfg: Config, model: ModelConfig, params: Mapping[str, Any]) -> tuple[Config, ModelConfig]:
    """The trial's config: the keys of ``params`` (dotted keys -> sampled values) that apply to ``model``
    (:func:`effective_params`), applied to ``cfg`` and ``model`` with the same validation a YAML file gets."""
    return _apply(cfg, model, effective_params(model, params))


def _apply(cfg: Config, model: ModelConfig, params: Mapping[str, Any]) -> tuple[Config, ModelConfig]:
    train = to_plain(cfg.train_for(model))
    model_raw = model_to_dict(model)
    for key, value in params.items():
        section, _, name = key.partition(".")
        set_dotted(train if section == "train" else model_raw, name, value)
    new_model = build_model_config(model_raw, "model")
    new_train = build_dataclass(TrainConfig, train, "train")
    return cfg.replace(train=new_train, model=(new_model,)), new_model


def max_evaluations(train: TrainConfig, search: Mapping[str, Any]) -> int:
    """The most validation reports a trial can make (epochs / eval_every, rounded up), over every value the
    search can give ``train.epochs`` and ``train.eval.every``."""
    def bound(key: str, default: int, pick: Any) -> int:
        spec = search.get(key)
        if spec is None:
            return default
        kind, values = next(iter(spec.items()))
        if kind == "randint":
            return pick(values[0], values[1] - 1)
        return int(pick(values))

    epochs = bound("train.epochs", train.epochs, max)
    eval_every = bound("train.eval.every", train.eval.every, min)
    return -(-epochs // max(eval_every, 1))
