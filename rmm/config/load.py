"""Reading a config: YAML file -> ``a.b=value`` overrides -> protocol defaults -> validated :class:`Config`."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from rmm.config.coerce import build_dataclass, coerce, deep_merge, set_dotted
from rmm.config.dataset import DatasetConfig
from rmm.config.extract import build_features_config
from rmm.config.model import ModelConfig, build_model_config
from rmm.config.protocol import PROTOCOLS, protocol_defaults
from rmm.config.schema import Config, OutputConfig, RayConfig, TuneConfig
from rmm.config.search import check_search_space
from rmm.config.train import TrainConfig
from rmm.errors import ConfigError

#: The sections built field by field from their dataclass (``features`` and ``model`` pick a class per entry).
_SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "train": TrainConfig,
    "tune": TuneConfig,
    "ray": RayConfig,
    "output": OutputConfig,
}


def load_config(path: str | Path, overrides: Sequence[str] = ()) -> Config:
    """Read a YAML config, apply ``a.b=value`` overrides, and validate every section.

    Raises:
        ConfigError: unreadable or malformed YAML, an unknown key, a bad value or override; the message
            names the file and the offending section/key.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as err:
        raise ConfigError(f"cannot read config {path}: {err.strerror}") from err
    try:
        raw = yaml.safe_load(text) or {}
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(f"malformed YAML in {path}{where}: {problem}") from err
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping of sections, got {type(raw).__name__}")
    try:
        return config_from_dict(apply_overrides(raw, overrides))
    except ConfigError as err:
        raise ConfigError(f"{path}: {err}") from err


def apply_overrides(raw: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Return a copy of ``raw`` with each ``a.b.c=value`` applied; the value is parsed as YAML
    (so ``3``, ``1e-3``, ``true``, ``[a, b]`` get their types). Numeric parts index lists."""
    data = json.loads(json.dumps(raw))
    for item in overrides:
        key, sep, value_text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} must look like section.key=value")
        try:
            value = yaml.safe_load(value_text)
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML") from err
        set_dotted(data, key, value)
    return data


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data (parsed YAML with overrides applied)."""
    known = set(_SECTIONS) | {"features", "model", "stages", "protocol"}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid sections: {sorted(known)}")
    protocol = raw.get("protocol") or "strict"
    if protocol not in PROTOCOLS:
        raise ConfigError(f"protocol must be one of {list(PROTOCOLS)}, got {protocol!r}")
    kwargs: dict[str, Any] = {"protocol": protocol}
    for name, cls in _SECTIONS.items():
        defaults = protocol_defaults(cls, protocol)
        if raw.get(name) is not None or defaults:
            section = raw.get(name) or {}
            if not isinstance(section, Mapping):
                raise ConfigError(f"section {name!r} must be a mapping, got {type(section).__name__}: {section!r}")
            kwargs[name] = build_dataclass(cls, deep_merge(defaults, section), name)
    if raw.get("features") is not None:
        kwargs["features"] = build_features_config(raw["features"])
    if raw.get("model") is not None:
        entries = raw["model"] if isinstance(raw["model"], list) else [raw["model"]]
        kwargs["model"] = tuple(build_model_config(e, f"model[{i}]", protocol) for i, e in enumerate(entries))
    if raw.get("stages") is not None:
        kwargs["stages"] = tuple(coerce(raw["stages"], tuple[str, ...], "stages"))
    try:
        cfg = Config(**kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if cfg.tune.search or any(m.search for m in cfg.model):
        check_search_space(cfg.tune.search, tuned_models(cfg))  # each key applies to some tuned model
        for model in tuned_models(cfg):
            if model.search:
                check_search_space(model.search, (model,))  # an entry's own grid applies to it
    return cfg


def tuned_models(cfg: Config) -> tuple[ModelConfig, ...]:
    """The configured models a sweep covers: those ``tune.models`` names (a model name, or a label such as
    ``vbpr[image_stats+text_minilm|concat]`` to pick one of several entries of the same model), or all."""
    wanted = set(cfg.tune.models)
    known = {m.name for m in cfg.model} | {m.label for m in cfg.model}
    unknown = sorted(wanted - known)
    if unknown:
        raise ConfigError(f"tune.models names {unknown}, which the model section does not configure; "
                          f"configured: {sorted(known)}")
    return tuple(m for m in cfg.model if not wanted or m.name in wanted or m.label in wanted)

