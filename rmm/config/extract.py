"""The ``features`` section: the extractors of ``rmm extract``, one config class per extractor kind.

As a model entry accepts exactly its model's hyperparameters, an extractor entry accepts exactly the keys of its
``kind``'s class (:data:`EXTRACTOR_CONFIGS`), so a key that does not apply to that kind (``pooling`` on a
``torchvision`` extractor, ``max_new_tokens`` on ``lvlm_embed``) fails at load, naming the valid ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rmm.config.coerce import build_dataclass
from rmm.errors import ConfigError
from rmm.validation import require_at_least, require_store_name

DTYPES = ("float32", "bfloat16", "float16")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2", "flash_attention_3")


@dataclass(frozen=True)
class ExtractorConfig:
    """What every extractor has: its name and kind, and how it runs.

    ``kind`` picks the extractor (see ``rmm.features.extractors.EXTRACTORS``) and its config class, the one
    :data:`EXTRACTOR_CONFIGS` names; each kind's class has its kind as the default. This base class is the config
    of an extractor kind registered without a class of its own.

    How it runs (runtime fields; changing them never invalidates a feature):
        batch_size (model batch), bucket_window (a Ray batch holds ``bucket_window`` model batches, sorted by
        input length so each model batch pads little), concurrency (actors: a number or a ``[min, max]``
        autoscaling range), num_cpus / num_gpus per actor (its torch threads are its CPUs; on a CPU box one
        single-thread actor per core is fastest where the model fits that many times in memory), group
        (extractors with the same group share one actor pool, one read of the items and one load of a model they
        have in common).
    """

    name: str
    kind: str
    batch_size: int = 8
    bucket_window: int = 4
    concurrency: int | tuple[int, int] = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    group: str | None = None

    def __post_init__(self) -> None:
        require_store_name("extractor name", self.name)
        expected = EXTRACTOR_CONFIGS.get(self.kind, ExtractorConfig)
        if type(self) is not expected:
            raise ValueError(f"extractor kind {self.kind!r} takes a {expected.__name__}, got a {type(self).__name__}")
        require_at_least(self, 1, "batch_size", "bucket_window")
        require_at_least(self, 0, "num_cpus", "num_gpus")
        low, high = self.concurrency if isinstance(self.concurrency, tuple) else (self.concurrency,) * 2
        if not 1 <= low <= high:
            raise ValueError(f"concurrency must be >= 1 or a range [min, max] with 1 <= min <= max, "
                             f"got {self.concurrency!r}")

    @property
    def key(self) -> str:
        """Identity of the extractor in a job: an embed and a describe extractor may share a name (their
        features, ``<name>_<pooling>`` and ``<name>_desc_<encoder>``, differ)."""
        return f"{self.kind}:{self.name}"

    @property
    def batch_rows(self) -> int:
        """Rows per Ray batch handed to an actor: ``bucket_window`` model batches."""
        return self.batch_size * self.bucket_window


@dataclass(frozen=True)
class SentenceConfig(ExtractorConfig):
    """``sentence``: a Sentence-BERT model over ``title. text``. ``model``: a name such as ``minilm``, a hub id
    or a local path (None: all-MiniLM-L6-v2)."""

    kind: str = "sentence"

    model: str | None = None


@dataclass(frozen=True)
class ImageExtractorConfig(ExtractorConfig):
    """An extractor that reads item images: ``max_image_size`` is the longest image side after decoding (the
    torchvision CNN uses it as its input size; a group decodes at its largest)."""

    max_image_size: int = 224

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "max_image_size")


@dataclass(frozen=True)
class ImageStatsConfig(ImageExtractorConfig):
    """``image_stats``: colour histogram and grey thumbnail, no model."""

    kind: str = "image_stats"


@dataclass(frozen=True)
class EncoderConfig(ExtractorConfig):
    """An extractor with a neural model: ``model`` is a hub id, a local path, or ``tiny:<arch>`` for a tiny
    randomly initialised offline model of that architecture; ``dtype`` its weights' dtype."""

    model: str | None = None
    dtype: str = "float32"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.dtype not in DTYPES:
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")


@dataclass(frozen=True)
class CLIPTextConfig(EncoderConfig):
    """``clip_text``: CLIP's text tower."""

    kind: str = "clip_text"


@dataclass(frozen=True)
class ImageEncoderConfig(EncoderConfig, ImageExtractorConfig):
    """A neural model over item images."""


@dataclass(frozen=True)
class CLIPImageConfig(ImageEncoderConfig):
    """``clip_image``: CLIP's image tower; in one group with ``clip_text`` of the same model the model loads once."""

    kind: str = "clip_image"


@dataclass(frozen=True)
class TorchvisionConfig(ImageEncoderConfig):
    """``torchvision``: ``weights`` is an enum name such as ``IMAGENET1K_V2`` or a local state-dict file (None:
    random init)."""

    kind: str = "torchvision"

    weights: str | None = None


@dataclass(frozen=True)
class ViTConfig(ImageEncoderConfig):
    """``vit``: a transformers ViT-style image model; ``pooling`` is ``cls`` or ``mean``."""

    kind: str = "vit"

    pooling: str = "mean"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.pooling not in ("cls", "mean"):
            raise ValueError(f"pooling must be cls or mean, got {self.pooling!r}")


@dataclass(frozen=True)
class LVLMConfig(ImageEncoderConfig):
    """An LVLM over image and text: ``prompt`` (embed template, or describe template name / YAML file),
    ``attn_implementation`` and ``trust_remote_code`` (load the model's own code from the hub)."""

    prompt: str = "default"
    attn_implementation: str = "sdpa"
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.attn_implementation not in ATTN_IMPLEMENTATIONS:
            raise ValueError("attn_implementation must be sdpa, eager, flash_attention_2 or flash_attention_3, "
                             f"got {self.attn_implementation!r}")


@dataclass(frozen=True)
class LVLMEmbedConfig(LVLMConfig):
    """``lvlm_embed``: hidden states of ``layer`` pooled by ``pooling``, or by each of ``poolings`` (several
    features ``<name>_<pooling>`` of one forward pass)."""

    kind: str = "lvlm_embed"

    pooling: str = "mean"
    poolings: tuple[str, ...] = ()
    layer: int = -1

    def __post_init__(self) -> None:
        super().__post_init__()
        if len(set(self.poolings)) != len(self.poolings):
            raise ValueError(f"poolings must not repeat, got {list(self.poolings)}")


@dataclass(frozen=True)
class LVLMDescribeConfig(LVLMConfig):
    """``lvlm_describe``: a structured description decoded with ``max_new_tokens`` / ``do_sample`` /
    ``temperature`` / ``top_p`` / ``seed``, embedded by the sentence model ``text_encoder`` (feature
    ``<name>_desc_<encoder>``), and its ``keywords_top_n`` values per slot (feature ``<name>_keywords``)."""

    kind: str = "lvlm_describe"

    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    text_encoder: str = "minilm"
    keywords_top_n: int = 10

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "max_new_tokens", "keywords_top_n")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")


#: Extractor kind -> its config class (the extractor classes of ``rmm.features.extractors`` take these).
EXTRACTOR_CONFIGS: Mapping[str, type[ExtractorConfig]] = {
    "lvlm_embed": LVLMEmbedConfig,
    "lvlm_describe": LVLMDescribeConfig,
    "sentence": SentenceConfig,
    "image_stats": ImageStatsConfig,
    "torchvision": TorchvisionConfig,
    "vit": ViTConfig,
    "clip_image": CLIPImageConfig,
    "clip_text": CLIPTextConfig,
}


def build_extractor_config(entry: Any, section: str) -> ExtractorConfig:
    """Validate one extractor entry against the config class of its ``kind``."""
    if not isinstance(entry, Mapping) or "kind" not in entry:
        raise ConfigError(f"section {section!r} must be a mapping with a 'kind' key, got {entry!r}")
    kind = entry["kind"]
    if kind not in EXTRACTOR_CONFIGS:
        raise ConfigError(f"section {section!r}: unknown extractor kind {kind!r}; valid kinds: "
                          f"{', '.join(sorted(EXTRACTOR_CONFIGS))}")
    return build_dataclass(EXTRACTOR_CONFIGS[kind], entry, f"{section} ({kind})")


def build_features_config(section: Any) -> FeaturesConfig:
    """Validate the ``features`` section: each extractor entry against the config class of its kind."""
    if not isinstance(section, Mapping):
        raise ConfigError(f"section 'features' must be a mapping, got {type(section).__name__}: {section!r}")
    unknown = sorted(set(section) - {"extractors"})
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]!r} in section 'features'; valid keys: extractors")
    entries = section.get("extractors") or ()
    if not isinstance(entries, (list, tuple)):
        raise ConfigError(f"features.extractors must be a list of extractor entries, got {entries!r}")
    extractors = tuple(build_extractor_config(e, f"features.extractors[{i}]") for i, e in enumerate(entries))
    try:
        return FeaturesConfig(extractors=extractors)
    except ValueError as err:
        raise ConfigError(f"section 'features': {err}") from err


@dataclass(frozen=True)
class FeaturesConfig:
    """The extractors of ``rmm extract``, run in order, sharing actors within a ``group``. Two extractors may
    share a name only if their kinds differ (the pipeline checks that no two write the same feature)."""

    extractors: tuple[ExtractorConfig, ...] = ()

    def __post_init__(self) -> None:
        keys = [e.key for e in self.extractors]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"extractor names must be unique per kind, repeated: {duplicated}")
