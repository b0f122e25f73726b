"""The ``tune.search`` block: dotted keys -> one distribution each, checked without Ray.

Example::

    search:
      train.learning_rate: {loguniform: [1.0e-4, 1.0e-1]}
      model.embedding_dim: {choice: [32, 64]}
      model.features: {grid: [[image_stats, text_minilm], [lvlm_tiny_mean]]}
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from rmm.config import Config, ConfigError, ModelConfig, TrainConfig, build_dataclass, build_model_config, \
    model_to_dict

DISTRIBUTIONS = ("choice", "grid", "uniform", "loguniform", "randint")
_RANGES = ("uniform", "loguniform", "randint")
_MODEL_KEYS = ("features", "fusion")


def check_search_space(search: Mapping[str, Any], models: tuple[ModelConfig, ...]) -> None:
    """Raise ConfigError naming the key when a distribution or a searched key is not valid."""
    train_keys = {f.name for f in dataclasses.fields(TrainConfig)}
    for key, spec in search.items():
        where = f"tune.search.{key}"
        if not isinstance(spec, Mapping) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
            raise ConfigError(f"{where} must be one distribution like {{choice: [...]}}; "
                              f"valid distributions: {', '.join(DISTRIBUTIONS)}")
        kind, values = next(iter(spec.items()))
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: {kind} needs a non-empty list, got {values!r}")
        if kind in _RANGES and len(values) != 2:
            raise ConfigError(f"{where}: {kind} needs [low, high], got {values!r}")
        section, _, name = key.partition(".")
        if section == "train" and name in train_keys:
            continue
        if section == "model" and models:
            valid = {f.name for m in models for f in dataclasses.fields(m.params)} | set(_MODEL_KEYS)
            if name in valid:
                continue
            raise ConfigError(f"{where}: unknown model key {name!r}; valid keys: {', '.join(sorted(valid))}")
        raise ConfigError(f"{where}: searched keys must be train.<key> or model.<key>; "
                          f"valid train keys: {', '.join(sorted(train_keys))}")


def apply_params(cfg: Config, model: ModelConfig, params: Mapping[str, Any]) -> tuple[Config, ModelConfig]:
    """The trial's config: ``params`` (dotted keys -> sampled values) applied to ``cfg`` and ``model``, with the
    same validation a YAML file gets."""
    train = dataclasses.asdict(cfg.train)
    model_raw = model_to_dict(model)
    for key, value in params.items():
        section, _, name = key.partition(".")
        (train if section == "train" else model_raw)[name] = value
    new_model = build_model_config(model_raw, "model")
    new_train = build_dataclass(TrainConfig, train, "train")
    return cfg.replace(train=new_train, model=(new_model,)), new_model
