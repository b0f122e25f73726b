"""The run configuration: the sections a YAML file has, their shared constants, and the whole :class:`Config`."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rmm.config.coerce import build_dataclass, deep_merge, to_plain
from rmm.config.dataset import DatasetConfig
from rmm.config.extract import FeaturesConfig
from rmm.config.model import ModelConfig, model_to_dict
from rmm.config.protocol import PROTOCOLS
from rmm.config.train import SEEDS_WITHOUT_TUNE, TrainConfig
from rmm.validation import require_at_least

if TYPE_CHECKING:
    from rmm.storage import Storage

STAGES = ("data", "extract", "train", "tune", "report")
#: ``<out>/data/<dataset>/``: where the dataset directories of an output directory live.
DATA_DIR = "data"
#: ``<out>/features/<dataset>/``: where the feature stores of an output directory live.
FEATURES_DIR = "features"


@dataclass(frozen=True)
class TuneConfig:
    """A Ray Tune sweep (see :mod:`rmm.config.search` for the ``search`` block).

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
        num_workers: Ray Train workers per trial (``train.scaling.num_workers`` is for ``rmm train``).
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
        return build_dataclass(TrainConfig, deep_merge(to_plain(self.train), model.train), f"{model.label} train")

    @property
    def storage(self) -> Storage:
        """Where the outputs live: ``output.dir``, a local path or a URI (see :mod:`rmm.storage`)."""
        from rmm.storage import Storage  # pyarrow's filesystems: only the stages that write need them

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
        data = to_plain(self)
        data["model"] = [model_to_dict(m) for m in self.model]
        return data

    def replace(self, **changes: Any) -> Config:
        return dataclasses.replace(self, **changes)


def check_fits(cfg: Config, num_cpus: float, num_gpus: float | None) -> None:
    """Raise ValueError when a local Ray of ``num_cpus`` CPUs (and ``num_gpus`` GPUs, None: unknown) cannot
    place what the config asks for at once: Ray would wait for the resources forever instead of failing."""
    scaling = cfg.train.scaling
    needs = {"train.scaling.num_workers x cpus_per_worker": scaling.num_workers * scaling.cpus_per_worker}
    if "tune" in cfg.stages and cfg.tune.search:
        needs["tune.cpus_per_trial + tune.num_workers x train.scaling.cpus_per_worker"] = (
            cfg.tune.cpus_per_trial + cfg.tune.num_workers * scaling.cpus_per_worker)
    if "extract" in cfg.stages:
        needs.update({f"extractor {e.name!r} num_cpus": e.num_cpus for e in cfg.features.extractors})
    for what, cpus in needs.items():
        if cpus > num_cpus:
            raise ValueError(f"{what} = {cpus:g} CPUs, more than the {num_cpus:g} of the local Ray (ray.num_cpus): "
                             f"Ray would wait forever; lower the former or raise ray.num_cpus")
    if num_gpus is not None and scaling.use_gpu and scaling.num_workers > num_gpus:
        raise ValueError(f"train.scaling.use_gpu with num_workers = {scaling.num_workers} needs "
                         f"{scaling.num_workers} GPUs, the local Ray has {num_gpus:g} (ray.num_gpus); lower "
                         f"num_workers or set use_gpu: false")

