"""The ``train`` section, split by concern: optimisation at its top level, then ``eval`` (validation, early
stopping, test ranking), ``scaling`` (Ray Train workers) and ``fault_tolerance`` (checkpoints, restarts).

``scaling`` and ``fault_tolerance`` say how a run executes, not what it computes, so a run's identity leaves
them out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from rmm.validation import require_at_least, require_positive

#: MMRec's training defaults (``overall.yaml``), as ``protocol: mmrec`` sets them on the train section.
#: ``stopping_step: 20`` stops after 21 evaluations without a gain, i.e. ``patience: 21``.
MMREC_TRAIN: Mapping[str, Any] = {
    "epochs": 1000, "batch_size": 2048, "learning_rate": 1e-3, "seed": 999, "negatives": "train_items",
    "eval": {"every": 1, "patience": 21, "topk": (5, 10, 20, 50), "metric": "recall@20", "test_masks_valid": False},
}
NEGATIVES = ("all_items", "train_items")
#: ``train.scaling.launcher`` values (:class:`ScalingConfig`).
LAUNCHERS = ("auto", "in_process", "ray_train")
#: Full-ranking metric names (``rmm.eval.metrics.METRICS`` computes exactly these), each asked for as ``<name>@K``.
METRIC_NAMES = ("recall", "ndcg", "precision", "hit_rate", "map")
#: What to do instead of combining ``train.seeds`` with ``rmm tune``.
SEEDS_WITHOUT_TUNE = ("sweep with one seed (no train.seeds), then train the chosen configurations with train.seeds "
                      "in a config whose stages leave out tune and that has no tune.search")


@dataclass(frozen=True)
class EvalConfig:
    """``train.eval``: how often a run validates, when it stops, and what it ranks.

    Attributes:
        every: validate every this many epochs (and after the last).
        patience: stop after this many evaluations without a gain in ``metric``.
        topk: the cut-offs K every metric is computed at.
        metric: ``<name>@K`` that picks the best epoch and drives early stopping (and Tune's schedulers).
        test_masks_valid: protocol switch (``strict`` value first, then ``mmrec``'s; see the README's protocol
            table): rank test items with train *and* valid items masked (True), or train items only, so that valid
            items stay candidates at test time (False, MMRec: its test loader masks the train set only).
    """

    every: int = 1
    patience: int = 10
    topk: tuple[int, ...] = (10, 20, 50)
    metric: str = "recall@20"
    test_masks_valid: bool = True

    def __post_init__(self) -> None:
        require_at_least(self, 1, "every", "patience")
        if not self.topk or any(k < 1 for k in self.topk) or len(set(self.topk)) != len(self.topk):
            raise ValueError(f"topk must be distinct cut-offs >= 1, got {list(self.topk)}")
        name, _, k = self.metric.partition("@")
        if name not in METRIC_NAMES or not k.isdigit() or int(k) not in self.topk:
            raise ValueError(f"metric {self.metric!r} must be '<name>@K' with name one of {list(METRIC_NAMES)} "
                             f"and K in topk {list(self.topk)}")


@dataclass(frozen=True)
class ScalingConfig:
    """``train.scaling``: the Ray Train workers of a run (``rmm train``; a sweep's trials use ``tune.num_workers``).

    Attributes:
        num_workers: data-parallel workers (DDP), each sampling its shard of every epoch's batches.
        use_gpu: one whole GPU per worker.
        cpus_per_worker: the CPUs Ray reserves for each worker (its torch threads).
        launcher: where a run trains. ``in_process``: in the command's own process, without Ray (one worker;
            the same ``fit``, checkpoints, resume and record as a Ray Train run, without the seconds and the
            GB of a Ray Train job: its controller, worker and their imports). ``ray_train``: in Ray Train
            workers. ``auto``: in process when it can be, i.e. one worker, a local Ray (no ``ray.address``), no
            automatic restarts (``fault_tolerance.max_failures: 0``) and not a sweep's trial; Ray Train
            otherwise.
    """

    num_workers: int = 2
    use_gpu: bool = False
    cpus_per_worker: float = 0.5
    launcher: str = "auto"

    def __post_init__(self) -> None:
        require_at_least(self, 1, "num_workers")
        require_positive(self, "cpus_per_worker")
        if self.launcher not in LAUNCHERS:
            raise ValueError(f"launcher must be one of {list(LAUNCHERS)}, got {self.launcher!r}")
        if self.launcher == "in_process" and self.num_workers != 1:
            raise ValueError(f"launcher in_process trains one worker, got num_workers {self.num_workers}; set "
                             f"num_workers: 1 or launcher: ray_train")


@dataclass(frozen=True)
class FaultToleranceConfig:
    """``train.fault_tolerance``: how a run survives a lost worker.

    Attributes:
        checkpoint_every: write a checkpoint every this many epochs (and at the end); a restart resumes from it.
        max_failures: restarts Ray Train makes before the run fails (-1: without limit).
    """

    checkpoint_every: int = 5
    max_failures: int = 0

    def __post_init__(self) -> None:
        require_at_least(self, 1, "checkpoint_every")
        require_at_least(self, -1, "max_failures")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation of a training run, with its evaluation, scaling and fault tolerance as sub-sections.

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s; see the README's protocol table):
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
    seed: int = 2024
    #: ``fp32``, or ``bf16``: the training step runs under ``torch.autocast`` to bfloat16 (meant for GPUs; sparse
    #: graph propagation and evaluation stay float32). See ``rmm.train.loop.PRECISIONS``.
    precision: str = "fp32"
    negatives: str = "all_items"
    lr_decay: tuple[float, int] = (1.0, 50)
    #: When given, every model trains once per seed (``seed`` is then unused): one run each, reported as mean ±
    #: std over the seeds. Not with ``rmm tune``: sweep with one seed, then train the chosen configurations with seeds.
    seeds: tuple[int, ...] = ()
    eval: EvalConfig = field(default_factory=EvalConfig)
    scaling: ScalingConfig = field(default_factory=ScalingConfig)
    fault_tolerance: FaultToleranceConfig = field(default_factory=FaultToleranceConfig)
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {"mmrec": MMREC_TRAIN}
    #: The former flat train keys -> where they live now: a config that still has one fails saying so.
    moved_keys: ClassVar[Mapping[str, str]] = {
        "eval_every": "eval.every", "patience": "eval.patience", "topk": "eval.topk", "metric": "eval.metric",
        "test_masks_valid": "eval.test_masks_valid", "num_workers": "scaling.num_workers",
        "use_gpu": "scaling.use_gpu", "cpus_per_worker": "scaling.cpus_per_worker",
        "checkpoint_every": "fault_tolerance.checkpoint_every", "max_failures": "fault_tolerance.max_failures"}

    def __post_init__(self) -> None:
        require_at_least(self, 1, "epochs", "batch_size")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives must be one of {list(NEGATIVES)}, got {self.negatives!r}")
        if not 0 < self.lr_decay[0] <= 1 or self.lr_decay[1] < 1:
            raise ValueError(f"lr_decay must be [gamma, step] with 0 < gamma <= 1 and step >= 1, "
                             f"got {list(self.lr_decay)}")
        if len(set(self.seeds)) != len(self.seeds) or any(seed < 0 for seed in self.seeds):
            raise ValueError(f"seeds must be distinct integers >= 0, got {list(self.seeds)}")
        require_at_least(self, 0, "weight_decay")
        if self.precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, got {self.precision!r}")
        require_positive(self, "learning_rate")
        if self.scaling.launcher == "in_process" and self.fault_tolerance.max_failures != 0:
            raise ValueError("scaling.launcher in_process cannot restart a failed run itself; set "
                             "fault_tolerance.max_failures: 0 (a rerun resumes from the last checkpoint) or "
                             "scaling.launcher: ray_train")
