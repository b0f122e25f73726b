"""Typed, frozen run configuration loaded from YAML.

Every YAML section maps 1:1 onto a frozen dataclass so that a typo fails at load time, naming the key, its
section and the valid keys, instead of silently falling back to a default hours into a cluster job.
Model hyperparameters live in each model's own dataclass (looked up in the model registry), so the
``model`` section accepts exactly the keys of the model it names.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Union

import yaml

from rmm.errors import ConfigError
from rmm.storage import Storage
from rmm.validation import require_at_least, require_positive, require_store_name

STAGES = ("data", "extract", "train", "tune", "report")
#: ``<out>/data/<dataset>/``: where the dataset directories of an output directory live.
DATA_DIR = "data"
#: ``<out>/features/<dataset>/``: where the feature stores of an output directory live.
FEATURES_DIR = "features"
SPLITS = ("temporal_ratio", "random_ratio", "mmrec_random", "leave_last_out", "global_temporal", "predefined")
#: ``protocol:`` values. ``strict`` is rmm's own conventions; ``mmrec`` gives every switch MMRec's value (each
#: config class says which in its ``protocol_defaults``); explicit config values win over either.
PROTOCOLS = ("strict", "mmrec")
#: MMRec's training defaults (``overall.yaml``), as ``protocol: mmrec`` sets them on the train section.
#: ``stopping_step: 20`` stops after 21 evaluations without a gain, i.e. ``patience: 21``.
MMREC_TRAIN = {"epochs": 1000, "batch_size": 2048, "learning_rate": 1e-3, "eval_every": 1, "patience": 21,
               "topk": (5, 10, 20, 50), "metric": "recall@20", "seed": 999, "test_masks_valid": False,
               "negatives": "train_items"}
NEGATIVES = ("all_items", "train_items")
SOURCES = ("synthetic", "mmrec", "amazon", "movielens")
#: Full-ranking metric names (``rmm.eval.metrics.METRICS`` computes exactly these), each asked for as ``<name>@K``.
METRIC_NAMES = ("recall", "ndcg", "precision", "hit_rate", "map")


@dataclass(frozen=True)
class SyntheticConfig:
    """Sizes of the built-in synthetic dataset (users with attribute tastes, items with images and text)."""

    num_users: int = 400
    num_items: int = 300
    interactions_per_user: int = 20
    image_size: int = 64
    popularity_skew: float = 1.0

    def __post_init__(self) -> None:
        require_at_least(self, 1, "num_users", "num_items", "interactions_per_user", "image_size")


@dataclass(frozen=True)
class DatasetConfig:
    """Where a dataset comes from and how it is filtered and split.

    ``path`` is the raw input of an importer: the MMRec folder, the Amazon reviews file, or the MovieLens
    folder. ``metadata_path`` is Amazon's item-metadata file; ``images_dir`` holds item images keyed by
    source id; ``text_path`` is MovieLens's optional overview CSV. ``split: predefined`` keeps a split the
    source ships (MMRec's ``x_label``). ``on_unknown_item``: ``error`` stops on an interaction whose item is not
    in the item file; ``skip`` drops such rows and counts them in ``dataset.json``.

    ``cold_items``: the share of items (after k-core filtering, drawn with ``seed``) held out of training
    entirely: every interaction of such a cold item goes to valid or test, split per user in the valid:test
    proportion of ``split_ratios``; the other items are split by ``split``. 0 (the default) holds out none. Not
    with ``split: predefined``, whose split is the source's.
    """

    name: str = "synthetic"
    source: str = "synthetic"
    path: str | None = None
    metadata_path: str | None = None
    images_dir: str | None = None
    text_path: str | None = None
    user_core: int = 5
    item_core: int = 5
    split: str = "temporal_ratio"
    on_unknown_item: str = "error"
    split_ratios: tuple[float, float, float] = (0.8, 0.1, 0.1)
    seed: int = 2024
    cold_items: float = 0.0
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    #: ``protocol: mmrec`` splits raw data as MMRec's published datasets were split (random per user).
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {"mmrec": {"split": "mmrec_random"}}

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"source must be one of {list(SOURCES)}, got {self.source!r}")
        if self.split not in SPLITS:
            raise ValueError(f"split must be one of {list(SPLITS)}, got {self.split!r}")
        ratios = list(self.split_ratios)
        if len(ratios) != 3 or not all(0 <= r <= 1 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
            raise ValueError(f"split_ratios must be three numbers in [0, 1] summing to 1 (train, valid, test), "
                             f"got {ratios}")
        if min(ratios) <= 0:
            part = ("train", "valid", "test")[ratios.index(min(ratios))]
            raise ValueError(f"split_ratios {ratios} leave the {part} part empty: every part needs a share > 0 "
                             f"(valid picks the model, test measures it)")
        if self.source != "synthetic" and not self.path:
            raise ValueError(f"source {self.source!r} needs dataset.path (the raw input)")
        if self.on_unknown_item not in ("error", "skip"):
            raise ValueError(f"on_unknown_item must be error or skip, got {self.on_unknown_item!r}")
        if self.user_core < 0 or self.item_core < 0:
            raise ValueError("user_core and item_core must be >= 0")
        if not 0 <= self.cold_items < 1:  # NaN fails too
            raise ValueError(f"cold_items must be a share of items in [0, 1), got {self.cold_items}")
        if self.cold_items and self.split == "predefined":
            raise ValueError("cold_items needs a split rmm makes, got split: predefined (the source's own split); "
                             "choose another split or set cold_items: 0")


@dataclass(frozen=True)
class ExtractorConfig:
    """One extractor: the store features it writes and how it runs.

    ``kind`` picks the extractor (see ``rmm.features.extractors.EXTRACTORS``); ``model`` is a hub id, a local
    path, or ``tiny:<arch>`` for a tiny randomly initialised offline model of that architecture.

    What it computes (part of a feature's fingerprint):
        model, weights (torchvision: enum name such as ``IMAGENET1K_V2`` or a local state-dict file; None =
        random init), pooling / poolings (``lvlm_embed``: several poolings of one forward pass, one feature
        ``<name>_<pooling>`` each), layer, dtype, prompt (embed template, or describe template name / YAML
        file), max_image_size (longest image side after decoding; the torchvision CNN uses it as its input size),
        attn_implementation, max_new_tokens / do_sample / temperature / top_p / seed (``lvlm_describe``
        decoding), text_encoder (sentence model of the description feature ``<name>_desc_<encoder>``),
        keywords_top_n (values per slot of ``<name>_keywords``), trust_remote_code.

    How it runs (runtime fields; changing them never invalidates a feature):
        batch_size (model batch), bucket_window (a Ray batch holds ``bucket_window`` model batches, sorted by
        input length so each model batch pads little), concurrency (actors: a number or a ``[min, max]``
        autoscaling range), num_cpus / num_gpus per actor, group (extractors with the same group share one
        actor pool, one read of the items and one load of a model they have in common).
    """

    name: str
    kind: str
    model: str | None = None
    weights: str | None = None
    pooling: str = "mean"
    poolings: tuple[str, ...] = ()
    layer: int = -1
    dtype: str = "float32"
    prompt: str = "default"
    max_image_size: int = 224
    attn_implementation: str = "sdpa"
    max_new_tokens: int = 48
    do_sample: bool = False
    temperature: float = 0.7
    top_p: float = 0.9
    seed: int = 0
    text_encoder: str = "minilm"
    keywords_top_n: int = 10
    batch_size: int = 8
    bucket_window: int = 4
    concurrency: int | tuple[int, int] = 1
    num_cpus: float = 0.5
    num_gpus: float = 0.0
    group: str | None = None
    trust_remote_code: bool = False

    def __post_init__(self) -> None:
        require_store_name("extractor name", self.name)
        require_at_least(self, 1, "batch_size", "bucket_window", "max_image_size", "max_new_tokens", "keywords_top_n")
        require_at_least(self, 0, "num_cpus", "num_gpus")
        if self.dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"dtype must be float32, bfloat16 or float16, got {self.dtype!r}")
        if self.attn_implementation not in ("sdpa", "eager", "flash_attention_2", "flash_attention_3"):
            raise ValueError("attn_implementation must be sdpa, eager, flash_attention_2 or flash_attention_3, "
                             f"got {self.attn_implementation!r}")
        if len(set(self.poolings)) != len(self.poolings):
            raise ValueError(f"poolings must not repeat, got {list(self.poolings)}")
        low, high = self.concurrency if isinstance(self.concurrency, tuple) else (self.concurrency,) * 2
        if not 1 <= low <= high:
            raise ValueError(f"concurrency must be >= 1 or a range [min, max] with 1 <= min <= max, "
                             f"got {self.concurrency!r}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ValueError(f"temperature must be > 0 and top_p in (0, 1], got {self.temperature}, {self.top_p}")

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
class FeaturesConfig:
    """The extractors of ``rmm extract``, run in order, sharing actors within a ``group``. Two extractors may
    share a name only if their kinds differ (the pipeline checks that no two write the same feature)."""

    extractors: tuple[ExtractorConfig, ...] = ()

    def __post_init__(self) -> None:
        keys = [e.key for e in self.extractors]
        duplicated = sorted({k for k in keys if keys.count(k) > 1})
        if duplicated:
            raise ValueError(f"extractor names must be unique per kind, repeated: {duplicated}")


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
        from rmm.models import get_model_class  # the registry imports torch; only needed here

        return len(self.features) > 1 and bool(get_model_class(self.name).fusions)


#: What to do instead of combining ``train.seeds`` with ``rmm tune``.
SEEDS_WITHOUT_TUNE = ("sweep with one seed (no train.seeds), then train the chosen configurations with train.seeds "
                      "in a config whose stages leave out tune and that has no tune.search")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, evaluation, scaling and failure handling of a training run.

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s; see the README's protocol table):
        test_masks_valid: rank test items with train *and* valid items masked (True), or train items only, so that
            valid items stay candidates at test time (False, MMRec: its test loader masks the train set only).
        negatives: BPR negatives drawn among all items the user has not trained on (``all_items``), or only among
            items that occur in the train split (``train_items``, MMRec's sampler).
        lr_decay: ``[gamma, step]``: epoch ``e``'s learning rate is ``learning_rate * gamma ** ((e - 1) / step)``
            (MMRec's ``learning_rate_scheduler``, a LambdaLR stepped after every epoch); ``[1.0, 50]`` keeps it
            constant (both protocols' default; MMRec's LATTICE sets ``[0.96, 50]``, which a model entry's
            ``train:`` block gives it).
    """

    epochs: int = 50
    batch_size: int = 2048
    learning_rate: float = 1e-3
    weight_decay: float = 0.0
    eval_every: int = 1
    patience: int = 10
    topk: tuple[int, ...] = (10, 20, 50)
    metric: str = "recall@20"
    seed: int = 2024
    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    checkpoint_every: int = 5
    max_failures: int = 0
    #: ``fp32``, or ``bf16``: the training step runs under ``torch.autocast`` to bfloat16 (meant for GPUs; sparse
    #: graph propagation and evaluation stay float32). See ``rmm.train.loop.PRECISIONS``.
    precision: str = "fp32"
    test_masks_valid: bool = True
    negatives: str = "all_items"
    lr_decay: tuple[float, int] = (1.0, 50)
    #: When given, every model trains once per seed (``seed`` is then unused): one run each, reported as mean ±
    #: std over the seeds. Not with ``rmm tune``: sweep with one seed, then train the chosen configurations with seeds.
    seeds: tuple[int, ...] = ()
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {"mmrec": MMREC_TRAIN}

    def __post_init__(self) -> None:
        require_at_least(self, 1, "epochs", "batch_size", "eval_every", "patience", "checkpoint_every",
                         "num_workers")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        if not 0 < self.lr_decay[0] <= 1 or self.lr_decay[1] < 1:
            raise ValueError(f"lr_decay must be [gamma, step] with 0 < gamma <= 1 and step >= 1, "
                             f"got {list(self.lr_decay)}")
        if len(set(self.seeds)) != len(self.seeds) or any(seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {list(self.seeds)}")
        require_at_least(self, 0, "weight_decay")
        require_at_least(self, -1, "max_failures")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        require_positive(self, "learning_rate", "cpus_per_worker")
        if not self.topk or any(k < 1 for k in self.topk) or len(set(self.topk)) != len(self.topk):
            raise ValueError(f"topk must be distinct cut-offs >= 1, got {list(self.topk)}")
        name, _, k = self.metric.partition("@")
        if name not in METRIC_NAMES or not k.isdigit() or int(k) not in self.topk:
            raise ValueError(f"metric {self.metric!r} must be '<name>@K' with name one of {list(METRIC_NAMES)} "
                             f"and K in topk {list(self.topk)}")


@dataclass(frozen=True)
class TuneConfig:
    """A Ray Tune sweep (see :mod:`rmm.tune.space` for the ``search`` block).

    ``search`` maps dotted keys (``train.learning_rate``, ``model.embedding_dim``, ``model.features``,
    ``model.fusion``) to one distribution each: choice, grid, uniform, loguniform or randint (high exclusive),
    e.g. ``{"loguniform": [1e-4, 1e-1]}``. Grid keys are crossed into grid points; each point is sampled
    ``num_samples`` times over the other keys. A searched key applies only to the models it means something for
    (``model.fusion`` where several features are fused, ``model.features`` for content models, a model key for
    the models that have it); points that then coincide run once. ``models`` names the configured models to
    sweep (all if empty).

    Attributes:
        search_alg: ``random`` (the grid crossed with random samples), ``grid`` (every key a grid), ``optuna``
            or ``hyperopt`` (optional extras ``rmm[optuna]``, ``rmm[hyperopt]``; one search per grid point).
        scheduler: ``fifo``, or ``asha`` (stops weak trials on the validation metric reported after each
            evaluation; ``asha_grace_period`` and the rungs count evaluations).
        max_concurrent_trials: trials running at once.
        cpus_per_trial: CPUs of a trial's own process, which only drives its Ray Train run.
        gpus_per_trial: GPUs of a trial, split across its ``num_workers`` Ray Train workers (0.5 with one
            worker: two trials share a GPU).
        num_workers: Ray Train workers per trial (``train.num_workers`` is for ``rmm train``).
    """

    models: tuple[str, ...] = ()
    search: Mapping[str, Any] = field(default_factory=dict)
    num_samples: int = 1
    scheduler: str = "fifo"
    search_alg: str = "random"
    max_concurrent_trials: int = 1
    cpus_per_trial: float = 0.25
    gpus_per_trial: float = 0.0
    num_workers: int = 1
    asha_grace_period: int = 1
    asha_reduction_factor: float = 2.0

    def __post_init__(self) -> None:
        if self.scheduler not in ("fifo", "asha"):
            raise ValueError(f"scheduler must be fifo or asha, got {self.scheduler!r}")
        if self.search_alg not in ("random", "grid", "optuna", "hyperopt"):
            raise ValueError(f"search_alg must be random, grid, optuna or hyperopt, got {self.search_alg!r}")
        require_at_least(self, 1, "num_samples", "max_concurrent_trials", "num_workers", "asha_grace_period")
        if self.cpus_per_trial <= 0 or self.gpus_per_trial < 0:
            raise ValueError(f"cpus_per_trial must be > 0 and gpus_per_trial >= 0, got {self.cpus_per_trial}, "
                             f"{self.gpus_per_trial}")
        if self.asha_reduction_factor <= 1:
            raise ValueError(f"asha_reduction_factor must be > 1, got {self.asha_reduction_factor}")
        if self.search_alg == "grid":
            sampled = sorted(k for k, spec in self.search.items() if isinstance(spec, Mapping) and "grid" not in spec)
            if sampled:
                raise ValueError(f"search_alg grid searches grids only, but {sampled} are sampled; make them "
                                 f"{{grid: [...]}} or use search_alg: random")


@dataclass(frozen=True)
class RayConfig:
    """``address`` None starts a local Ray; ``num_cpus`` is the logical CPU count of that local Ray.
    ``dashboard`` starts the local Ray's dashboard (http://127.0.0.1:8265, or the next free port), off by
    default: it costs seconds and memory per command and nothing in rmm needs it."""

    address: str | None = None
    num_cpus: int | None = None
    num_gpus: int | None = None
    dashboard: bool = False

    def __post_init__(self) -> None:
        require_at_least(self, 1, "num_cpus")  # a local Ray with no CPU never schedules anything
        require_at_least(self, 0, "num_gpus")


@dataclass(frozen=True)
class OutputConfig:
    """``dir``: a local directory, or a URI (``s3://bucket/run``, ``gs://...``) that every node of a cluster
    reaches; see :mod:`rmm.storage`."""

    dir: str = "runs/default"


@dataclass(frozen=True)
class Config:
    stages: tuple[str, ...] = STAGES
    #: ``strict`` or ``mmrec``: the defaults of every protocol switch (see :data:`PROTOCOLS`); recorded here, already
    #: applied to the sections.
    protocol: str = "strict"
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    features: FeaturesConfig = field(default_factory=FeaturesConfig)
    model: tuple[ModelConfig, ...] = ()
    train: TrainConfig = field(default_factory=TrainConfig)
    tune: TuneConfig = field(default_factory=TuneConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def __post_init__(self) -> None:
        unknown = [s for s in self.stages if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; valid stages: {list(STAGES)}")
        if not self.output.dir:
            raise ValueError("output.dir must name a directory or URI, got an empty string")
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {list(PROTOCOLS)}, got {self.protocol!r}")
        for model in self.model:
            self.train_for(model)  # a model's train overrides must make a valid train section
        seeds = next((t.seeds for t in (self.train, *map(self.train_for, self.model)) if t.seeds), ())
        if "train.seeds" in self.tune.search or (seeds and (self.tune.search or "tune" in self.stages)):
            raise ValueError(f"train.seeds {list(seeds) or '(searched)'} cannot go with rmm tune (a tune stage or "
                             f"tune.search; a sweep trains each point with one seed): {SEEDS_WITHOUT_TUNE}")
        if self.ray.address is None and self.ray.num_cpus is not None:
            check_fits(self, self.ray.num_cpus, self.ray.num_gpus)

    def search_for(self, model: ModelConfig) -> Mapping[str, Any]:
        """What a sweep searches for ``model``: ``tune.search`` with the model entry's own grid keys over it."""
        return {**self.tune.search, **model.search}

    def train_for(self, model: ModelConfig) -> TrainConfig:
        """The train settings of ``model``: the ``train`` section with the model entry's own ``train:`` keys."""
        if not model.train:
            return self.train
        return build_dataclass(TrainConfig, {**dataclasses.asdict(self.train), **model.train}, f"{model.label} train")


    @property
    def storage(self) -> Storage:
        """Where the outputs live: ``output.dir``, a local path or a URI (see :mod:`rmm.storage`)."""
        return Storage(self.output.dir)

    @property
    def out_dir(self) -> Path:
        """The local directory the stages read and write: ``output.dir``, or this node's mirror of its URI."""
        return self.storage.local

    @property
    def dataset_dir(self) -> Path:
        """The dataset-directory contract: ``<out>/data/<dataset>/``."""
        return self.out_dir / DATA_DIR / self.dataset.name

    @property
    def feature_root(self) -> Path:
        """The feature-store contract: ``<out>/features/<dataset>/``."""
        return self.out_dir / FEATURES_DIR / self.dataset.name

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-able form with model params flattened back into their section."""
        data = _to_plain(dataclasses.asdict(self))
        data["model"] = [model_to_dict(m) for m in self.model]
        return data

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def check_fits(cfg: Config, num_cpus: float, num_gpus: float | None) -> None:
    """Raise ValueError when a local Ray of ``num_cpus`` CPUs (and ``num_gpus`` GPUs, None: unknown) cannot
    place what the config asks for at once: Ray would wait for the resources forever instead of failing."""
    train = cfg.train
    needs = {"train.num_workers x train.cpus_per_worker": train.num_workers * train.cpus_per_worker}
    if "tune" in cfg.stages and cfg.tune.search:
        needs["tune.cpus_per_trial + tune.num_workers x train.cpus_per_worker"] = (
            cfg.tune.cpus_per_trial + cfg.tune.num_workers * train.cpus_per_worker)
    if "extract" in cfg.stages:
        needs.update({f"extractor {e.name!r} num_cpus": e.num_cpus for e in cfg.features.extractors})
    for what, cpus in needs.items():
        if cpus > num_cpus:
            raise ValueError(f"{what} = {cpus:g} CPUs, more than the {num_cpus:g} of the local Ray (ray.num_cpus): "
                             f"Ray would wait forever; lower the former or raise ray.num_cpus")
    if num_gpus is not None and train.use_gpu and train.num_workers > num_gpus:
        raise ValueError(f"train.use_gpu with train.num_workers = {train.num_workers} needs {train.num_workers} "
                         f"GPUs, the local Ray has {num_gpus:g} (ray.num_gpus); lower num_workers or set "
                         f"use_gpu: false")


def model_to_dict(model: ModelConfig) -> dict[str, Any]:
    params = _to_plain(dataclasses.asdict(model.params)) if model.params is not None else {}
    extra = {key: _to_plain(dict(value)) for key, value in (("train", model.train), ("search", model.search)) if value}
    return {"name": model.name, "features": list(model.features), "fusion": model.fusion, **params, **extra}


def protocol_defaults(cls: type, protocol: str) -> dict[str, Any]:
    """The defaults ``protocol`` gives the fields of config class ``cls``: its ``protocol_defaults`` tables merged
    along the class hierarchy (a subclass's entries override its bases')."""
    merged: dict[str, Any] = {}
    for klass in reversed(cls.__mro__):
        merged.update(klass.__dict__.get("protocol_defaults", {}).get(protocol, {}))
    return merged


def _to_plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------- loading

_SECTIONS: dict[str, type] = {
    "dataset": DatasetConfig,
    "features": FeaturesConfig,
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


def set_dotted(data: Any, key: str, value: Any) -> None:
    """Set ``data[a][b]...`` for ``key='a.b...'``, creating mappings on the way; digits index lists.

    A single-model ``model`` section (a mapping) is addressed as ``model.key``."""
    parts = key.split(".")
    node = data
    for depth, part in enumerate(parts):
        last = depth == len(parts) - 1
        if isinstance(node, list):
            if not part.isdigit() or int(part) >= len(node):
                raise ConfigError(f"override {key!r}: {part!r} is not an index of a list of {len(node)}")
            if last:
                node[int(part)] = value
            else:
                node = node[int(part)]
        elif isinstance(node, dict):
            if last:
                node[part] = value
            else:
                if node.get(part) is None:
                    node[part] = {}
                node = node[part]
        else:
            raise ConfigError(f"override {key!r}: {'.'.join(parts[:depth])!r} is a value, not a section")


def config_from_dict(raw: Mapping[str, Any]) -> Config:
    """Build and validate a :class:`Config` from plain data (parsed YAML with overrides applied)."""
    known = set(_SECTIONS) | {"model", "stages", "protocol"}
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
            kwargs[name] = build_dataclass(cls, {**defaults, **section}, name)
    if raw.get("model") is not None:
        entries = raw["model"] if isinstance(raw["model"], list) else [raw["model"]]
        kwargs["model"] = tuple(build_model_config(e, f"model[{i}]", protocol) for i, e in enumerate(entries))
    if raw.get("stages") is not None:
        kwargs["stages"] = tuple(_coerce(raw["stages"], tuple[str, ...], "stages"))
    try:
        cfg = Config(**kwargs)
    except ValueError as err:
        raise ConfigError(str(err)) from err
    if cfg.tune.search or any(m.search for m in cfg.model):
        from rmm.tune.space import check_search_space

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


def build_model_config(entry: Any, section: str, protocol: str = "strict") -> ModelConfig:
    """Validate one ``model`` entry: name/features/fusion, the model's own ``train:`` keys, plus the keys of that
    model's own config (defaults from ``protocol`` where the entry does not give them)."""
    from rmm.models import get_model_class  # the registry imports torch; only needed here

    if not isinstance(entry, Mapping) or "name" not in entry:
        raise ConfigError(f"section {section!r} must be a mapping with a 'name' key, got {entry!r}")
    try:
        model_cls = get_model_class(str(entry["name"]))
    except KeyError as err:
        raise ConfigError(f"section {section!r}: {err.args[0]}") from err
    entry_keys = ("name", "features", "fusion", "train", "search")
    params_raw = {**protocol_defaults(model_cls.config_class, protocol),
                  **{k: v for k, v in entry.items() if k not in entry_keys}}
    params = build_dataclass(model_cls.config_class, params_raw, f"{section} ({entry['name']})",
                             extra_valid=entry_keys)
    train = entry.get("train") or {}
    if not isinstance(train, Mapping):
        raise ConfigError(f"{section}.train must be a mapping of train keys, got {train!r}")
    features = _coerce(entry.get("features", ()), tuple[str, ...], f"{section}.features")
    fusion = str(entry.get("fusion", "concat"))
    try:
        model_cls.check_inputs(features, fusion)
    except ValueError as err:
        raise ConfigError(f"section {section!r}: {err}") from err
    try:
        search = _coerce(entry.get("search") or {}, Mapping, f"{section}.search")
        return ModelConfig(name=str(entry["name"]), features=features, fusion=fusion, params=params,
                           train=dict(train), search=dict(search))
    except ValueError as err:
        raise ConfigError(f"section {section!r}: {err}") from err


def build_dataclass(cls: type, data: Any, section: str, extra_valid: Sequence[str] = ()) -> Any:
    """Instantiate frozen dataclass ``cls`` from a mapping, rejecting unknown keys and coercing types."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"section {section!r} must be a mapping, got {type(data).__name__}: {data!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        valid = sorted(set(fields) | set(extra_valid))
        raise ConfigError(f"unknown key {unknown[0]!r} in section {section!r}; valid keys: {', '.join(valid)}")
    hints = typing.get_type_hints(cls)
    kwargs = {k: _coerce(v, hints[k], f"{section}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"section {section!r}: {err}") from err


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Convert a YAML value to the annotated type, raising ConfigError naming ``where`` on mismatch."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _coerce(value, option, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if dataclasses.is_dataclass(hint):
        return build_dataclass(hint, value, where)
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            value = [value]
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where} must have {len(args)} items, got {list(value)}")
        return tuple(_coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (Mapping, dict) or hint in (dict, Mapping):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where} must be a mapping, got {value!r}")
        return dict(value)
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where} must be a string, got {value!r}")
        return str(value)
    return value


def save_snapshot(cfg: Config, directory: str | Path, name: str = "config.yaml") -> Path:
    """Write the resolved config (after overrides and defaults) next to a stage's outputs."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / name
    target.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    return target
