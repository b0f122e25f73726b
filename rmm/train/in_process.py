"""Train a one-worker run in the command's own process, without Ray.

A Ray Train job costs a controller actor and a worker process, each importing torch and Ray Train, plus a Ray
to run them: about 30 s and 1.5 GB before the first epoch on a 2-core box, more than a small dataset's whole
training. A run of one worker gains nothing from them on a local machine, so by default
(``train.scaling.launcher: auto``, see :class:`rmm.config.ScalingConfig`) it trains here: the same
:func:`rmm.train.worker.fit_from_config` a Ray Train worker runs, on as many torch threads as
``cpus_per_worker`` (what Ray gives a worker), its checkpoints under ``<out>/ray_results/<run name>/`` as a
Ray Train run keeps them, and a rerun resumes from the newest one, whichever launcher wrote it. What needs Ray
Train stays there: several workers (DDP), a cluster (``ray.address``), automatic restarts
(``fault_tolerance.max_failures``), a sweep's trials.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import torch

from rmm import console
from rmm.config import Config, ModelConfig, TrainConfig
from rmm.errors import ConfigError, UserError
from rmm.storage import RAY_RESULTS_DIR, Storage
from rmm.train.loop import CHECKPOINT_INFO_FILE, FitResult, ReportFn
from rmm.train.worker import (
    PARTIAL_SUFFIX,
    checkpoints,
    epoch_event,
    fit_from_config,
    rerun_hint,
    save_best_weights,
    worker_config,
)

#: Start of an in-process run's checkpoint directory name (then the epoch) under its Ray results directory.
CHECKPOINT_PREFIX = "checkpoint_in_process_"


def trains_in_process(cfg: Config, train_cfg: TrainConfig) -> bool:
    """Whether a run of ``train_cfg`` trains in this process (``train.scaling.launcher``): ``in_process`` always,
    ``ray_train`` never, ``auto`` when nothing needs Ray Train: one worker, a local Ray, no automatic restarts.
    ``in_process`` with a cluster address is refused (ConfigError): the run would not train on the cluster."""
    launcher = train_cfg.scaling.launcher
    if launcher == "in_process" and cfg.ray.address is not None:
        raise ConfigError(f"train.scaling.launcher in_process trains in this process, not on the Ray cluster at "
                          f"{cfg.ray.address}; set train.scaling.launcher: ray_train (or auto)")
    if launcher != "auto":
        return launcher == "in_process"
    return (train_cfg.scaling.num_workers == 1 and cfg.ray.address is None
            and train_cfg.fault_tolerance.max_failures == 0)


def fit_in_process(cfg: Config, model_cfg: ModelConfig, *, name: str, train_cfg: TrainConfig,
                   wrap_report: Callable[[ReportFn], ReportFn] | None = None) -> tuple[FitResult, str]:
    """Train run ``name`` here, resuming from its newest checkpoint; returns the result (best weights saved to
    the run directory, not in it) and where its checkpoints live.

    Raises:
        UserError: as ``fit`` raised it (NaN loss, bad data), its message prefixed with the run.
        RuntimeError: anything else; the message says from which epoch a rerun resumes.
    """
    if train_cfg.scaling.use_gpu and not torch.cuda.is_available():
        raise ConfigError("train.scaling.use_gpu is set but torch sees no GPU in this process; set use_gpu: false")
    storage = cfg.storage
    ray_rel = f"{RAY_RESULTS_DIR}/{name}"
    storage.pull(ray_rel)
    found = checkpoints(str(storage.local / ray_rel))
    config = worker_config(cfg, model_cfg, name=name, train_cfg=train_cfg, wrap_report=wrap_report)
    report = _Reporter(storage, ray_rel, name, model_cfg.label, train_cfg)
    device = torch.device("cuda", 0) if train_cfg.scaling.use_gpu else torch.device("cpu")
    try:
        with _torch_threads(max(1, int(train_cfg.scaling.cpus_per_worker))):
            fitted = fit_from_config(config, report, device=device, resume_from=found[-1][1] if found else None)
    except UserError as err:
        raise type(err)(f"run {name}: {err}") from err
    except Exception as err:
        raise RuntimeError(f"training run {name} failed ({type(err).__name__}: {err}); "
                           f"{rerun_hint(storage.where(ray_rel))}") from err
    return save_best_weights(config, fitted), storage.where(ray_rel)


class _Reporter:
    """The report function of an in-process run: each evaluation to the console's train bar, each checkpoint
    kept as the run's only one (written under a ``.partial`` name, then renamed, so a crash mid-copy leaves the
    previous checkpoint the newest finished one), pushed where the outputs live at a URI."""

    def __init__(self, storage: Storage, ray_rel: str, run: str, label: str, train_cfg: TrainConfig) -> None:
        self.storage, self.ray_rel, self.run, self.label, self.train_cfg = storage, ray_rel, run, label, train_cfg

    def __call__(self, metrics: dict[str, float], checkpoint_dir: str | None) -> None:
        console.current().event(epoch_event(self.run, self.label, self.train_cfg, metrics))
        if checkpoint_dir is None:
            return
        epoch = json.loads((Path(checkpoint_dir) / CHECKPOINT_INFO_FILE).read_text())["epoch"]
        root = self.storage.local / self.ray_rel
        target = root / f"{CHECKPOINT_PREFIX}{epoch:06d}"
        partial = target.with_name(target.name + PARTIAL_SUFFIX)
        shutil.rmtree(partial, ignore_errors=True)
        shutil.copytree(checkpoint_dir, partial)
        shutil.rmtree(target, ignore_errors=True)
        partial.rename(target)
        self.storage.push(f"{self.ray_rel}/{target.name}")
        older = [path.name for path in root.glob(f"{CHECKPOINT_PREFIX}*") if path != target]
        self.storage.remove(*(f"{self.ray_rel}/{name}" for name in older))


@contextlib.contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    """torch's intra-op threads set to ``count`` while the block runs (as Ray sets a worker's to its CPUs)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)
