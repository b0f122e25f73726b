"""The ``model`` section: one entry per recommender, its hyperparameters checked against the model's own
config dataclass (looked up in the model registry, which imports neither torch nor the model classes)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rmm.config.coerce import build_dataclass, coerce, to_plain
from rmm.config.protocol import protocol_defaults
from rmm.errors import ConfigError
from rmm.models.registry import model_spec
from rmm.validation import require_store_name


@dataclass(frozen=True)
class ModelConfig:
    """One recommender to train: its registry name, the store features it reads, how they are fused, and
    its own hyperparameters (``params``, an instance of the model's config dataclass)."""

    name: str
    features: tuple[str, ...] = ()
    fusion: str = "concat"
    params: Any = None
    #: This model's own train settings over the ``train`` section's (e.g. MMRec's LATTICE ``lr_decay``).
    train: Mapping[str, Any] = field(default_factory=dict)
    #: This model's own sweep grid over ``tune.search``'s (MMRec's per-model yaml grids): ``{grid: [...]}`` only.
    search: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        sampled = sorted(k for k, spec in self.search.items() if not isinstance(spec, Mapping) or "grid" not in spec)
        if sampled:
            raise ValueError(f"a model entry's search takes grids only ({{grid: [...]}}), got {sampled}; put sampled "
                             f"distributions in tune.search")
        for feature in self.features:
            require_store_name("feature", feature)
        if len(set(self.features)) != len(self.features):
            raise ValueError(f"features must not repeat, got {list(self.features)}")

    @property
    def label(self) -> str:
        """Readable identity used in results and reports, e.g. ``vbpr[image_stats+text_minilm|concat]``; the
        fusion is named only where there is something to fuse."""
        if not self.features:
            return self.name
        fusion = f"|{self.fusion}" if self.fuses else ""
        return f"{self.name}[{'+'.join(self.features)}{fusion}]"

    @property
    def fuses(self) -> bool:
        """Whether ``fusion`` applies: several features into a model with one content input (per-modality-branch
        models such as FREEDOM take each feature in its own branch and fuse nothing)."""
        return len(self.features) > 1 and bool(model_spec(self.name).fusions)


def model_to_dict(model: ModelConfig) -> dict[str, Any]:
    """A model entry as YAML writes it: name, features, fusion, the hyperparameters flat beside them, and the
    entry's own ``train:`` and ``search:`` blocks where it has them."""
    params = to_plain(model.params) if model.params is not None else {}
    extra = {key: to_plain(dict(value)) for key, value in (("train", model.train), ("search", model.search)) if value}
    return {"name": model.name, "features": list(model.features), "fusion": model.fusion, **params, **extra}


def build_model_config(entry: Any, section: str, protocol: str = "strict") -> ModelConfig:
    """Validate one ``model`` entry: name/features/fusion, the model's own ``train:`` keys, plus the keys of that
    model's own config (defaults from ``protocol`` where the entry does not give them)."""
    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ConfigError(f"section {section!r} must be a mapping with a 'name' key, got {entry!r}")
    try:
        spec = model_spec(str(entry["name"]))
    except KeyError as err:
        raise ConfigError(f"section {section!r}: {err.args[0]}") from err
    entry_keys = ("name", "features", "fusion", "train", "search")
    params_raw = {**protocol_defaults(spec.config_class, protocol),
                  **{k: v for k, v in entry.items() if k not in entry_keys}}
    params = build_dataclass(spec.config_class, params_raw, f"{section} ({entry['name']})",
                             extra_valid=entry_keys)
    train = entry.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigError(f"{section}.train must be a mapping of train keys, got {train!r}")
    features = coerce(entry.get("features", ()), tuple[str, ...], f"{section}.features")
    fusion = str(entry.get("fusion", "concat"))
    try:
        spec.check_inputs(features, fusion)
    except ValueError as err:
        raise ConfigError(f"section {section!r}: {err}") from err
    try:
        search = coerce(entry.get("search") or {}, Mapping, f"{section}.search")
        return ModelConfig(name=str(entry["name"]), features=features, fusion=fusion, params=params,
                           train=dict(train), search=dict(search))
    except ValueError as err:
        raise ConfigError(f"section {section!r}: {err}") from err
