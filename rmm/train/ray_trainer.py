"""Run :func:`rmm.train.loop.fit` in Ray Train workers and write the run record.

Ray only wires here: the workers read the dataset and features from disk themselves (the driver passes
paths, never data), ``ray.train.torch.prepare_model`` wraps the model in DDP (gloo on CPU, NCCL on GPU), and
``fit``'s ``report`` hook becomes ``ray.train.report`` with a ``Checkpoint``. Rank 0's ``FitResult`` comes
back as the trainer's ``return_value``.

A run is named: re-running the same ``run_name`` under the same output dir resumes from its latest checkpoint
(Ray Train restores it and ``fit`` continues after that epoch), which is also how ``max_failures`` recovers.

Fault injection (tests only): with ``RMM_TEST_FAIL_AT_EPOCH=N`` in the driver's environment, the last-ranked
worker raises once per run, after training and evaluating epoch N and before reporting it, so the epoch's
checkpoint is never written and a ``max_failures >= 1`` run must restart from the one before.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
from torch import nn

from rmm.cluster import init_ray
from rmm.config import Config, ModelConfig, TrainConfig, TuneConfig, model_to_dict, save_snapshot
from rmm.data.schema import INFO_FILE, DataError, load_dataset
from rmm.features.store import library_versions, load_feature, model_input_files, read_manifest
from rmm.models import get_model_class
from rmm.report.results import MODEL_FILE, PER_USER_FILE, RUN_FILE, RUNS_DIR
from rmm.storage import RAY_RESULTS_DIR, Storage
from rmm.train.loop import FitResult, fit

log = logging.getLogger(__name__)

#: Item-item kNN graphs keyed by feature content and graph spec (rmm.data.knn_cache), shared by all runs in <out>.
KNN_CACHE_DIR = "cache/knn"
#: Test-only: the epoch at which one worker fails, once per run (see the module docstring).
FAIL_AT_EPOCH_ENV = "RMM_TEST_FAIL_AT_EPOCH"
#: Marker, in the run directory, that the injected failure has happened (so the restarted run goes on).
_FAILED_MARKER = ".injected-failure"


class InjectedFailure(RuntimeError):
    """The worker failure ``RMM_TEST_FAIL_AT_EPOCH`` asks for."""


def train_model(cfg: Config, model_cfg: ModelConfig, *, run_name: str, train_cfg: TrainConfig | None = None,
                callbacks: Sequence[Any] = (), gpus_per_worker: float | None = None) -> dict[str, Any]:
    """Train one model with Ray Train and return its run record (DESIGN.md results contract).

    Args:
        cfg: the run configuration: dataset and feature locations, Ray address, output dir.
        model_cfg: the model, its features and fusion.
        run_name: unique name of the run: Ray results go to ``<out>/ray_results/<run_name>``, the record to
            ``<out>/runs/<run_name>/``.
        train_cfg: training settings; ``cfg.train`` when None (a Tune trial passes its sampled one).
        callbacks: Ray Train ``UserCallback``s, e.g. ``TuneReportCallback()`` inside a Tune trial.
        gpus_per_worker: GPUs of each worker, a fraction to share a GPU (e.g. between Tune trials); None: one
            whole GPU per worker when ``train_cfg.use_gpu``.

    Returns:
        ``{"model", "label", "features", "fusion", "config": {"model", "train"}, "best_epoch", "valid",
        "test", "train_seconds", "history", "resumed_after_epoch", "run_name", "run_dir"}``; ``valid`` and
        ``test`` map ``<metric>@K`` to the mean over users, ``fusion`` is None unless several features were
        fused, ``resumed_after_epoch`` is the checkpoint epoch the final attempt resumed from (after a worker
        failure or a re-run of the same ``run_name``), None when it trained from scratch.
    """
    train_cfg = train_cfg or cfg.train
    _check_inputs(cfg, model_cfg)
    init_ray(cfg.ray)
    run_dir = cfg.out_dir.resolve() / RUNS_DIR / run_name
    trainer = ray.train.torch.TorchTrainer(
        _train_worker,
        train_loop_config=worker_config(cfg, model_cfg, run_name=run_name, train_cfg=train_cfg),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu or bool(gpus_per_worker),
            resources_per_worker={"CPU": train_cfg.cpus_per_worker,
                                  **({"GPU": gpus_per_worker} if gpus_per_worker else {})}),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=cfg.storage.where(RAY_RESULTS_DIR),
            failure_config=ray.train.FailureConfig(max_failures=train_cfg.max_failures),
            # Checkpoints exist to resume; the latest one holds the best state too.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=list(callbacks),
        ),
    )
    result = trainer.fit()
    fitted: FitResult = result.return_value
    record = {
        "model": model_cfg.name,
        "label": model_cfg.label,
        "features": list(model_cfg.features),
        "fusion": model_cfg.fusion if model_cfg.fuses else None,
        "config": {"model": model_to_dict(model_cfg), "train": dataclasses.asdict(train_cfg)},
        "best_epoch": fitted.best_epoch,
        "valid": fitted.valid,
        "test": fitted.test,
        "train_seconds": fitted.train_seconds,
        "history": fitted.history,
        "resumed_after_epoch": fitted.resumed_after_epoch,
        "run_name": run_name,
        "run_dir": str(run_dir),
    }
    # The run's own config: this model and these train settings, no sweep.
    run_cfg = cfg.replace(train=train_cfg, model=(model_cfg,), tune=TuneConfig())
    _write_run(run_dir, record, fitted, run_cfg, result.path)
    return record


def worker_config(cfg: Config, model_cfg: ModelConfig, *, run_name: str, train_cfg: TrainConfig) -> dict[str, Any]:
    """The ``train_loop_config`` of one run's workers: where the outputs live and, relative to it, the dataset,
    features, run and kNN cache directories (never data), plus the model and train settings. A local
    ``output`` is absolute (workers do not run in the driver's working directory); a URI is kept, so a worker
    on another node reads the same store through its own mirror."""
    fail_at = os.environ.get(FAIL_AT_EPOCH_ENV)
    storage = cfg.storage
    return {"output": storage.where(),
            "dataset_dir": storage.relative(cfg.dataset_dir), "feature_root": storage.relative(cfg.feature_root),
            "run_dir": f"{RUNS_DIR}/{run_name}", "knn_cache_dir": KNN_CACHE_DIR,
            "model_cfg": model_cfg, "train_cfg": train_cfg, "fail_at_epoch": int(fail_at) if fail_at else None}


def _check_inputs(cfg: Config, model_cfg: ModelConfig) -> None:
    """Fail in the driver, before a worker group starts, on a wrong model/feature choice or missing input."""
    get_model_class(model_cfg.name).check_inputs(model_cfg.features, model_cfg.fusion)
    if not (cfg.dataset_dir / INFO_FILE).exists():
        raise DataError(f"no prepared dataset at {cfg.dataset_dir}; run `rmm data prepare CONFIG` first")
    for name in model_cfg.features:
        read_manifest(cfg.feature_root, name)  # raises FeatureNotFoundError naming the available ones


def _write_run(run_dir: Path, record: dict[str, Any], fitted: FitResult, cfg: Config, ray_path: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fitted.test_per_user.to_parquet(run_dir / PER_USER_FILE, index=False)
    full = {**record, "seed": cfg.train.seed, "ray_path": ray_path, "library_versions": library_versions()}
    (run_dir / RUN_FILE).write_text(json.dumps(full, indent=2))
    save_snapshot(cfg, run_dir)
    log.info("%s: test %s; record in %s", record["label"], record["test"], run_dir)


def _train_worker(config: dict[str, Any]) -> FitResult:
    """One Ray Train worker: resume if Ray restored a checkpoint, run ``fit``, save the best weights (rank 0)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fitted = fit_in_worker(config)
    else:
        with checkpoint.as_directory() as directory:
            fitted = fit_in_worker(config, resume_from=directory)
    if ray.train.get_context().get_world_rank() == 0:
        storage = Storage(config["output"])
        run_dir = storage.local / config["run_dir"]
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(fitted.best_state, run_dir / MODEL_FILE)
        storage.push(f"{config['run_dir']}/{MODEL_FILE}")
    return dataclasses.replace(fitted, best_state=None)  # the weights travel by file, not through Ray


def fit_in_worker(config: dict[str, Any], *, resume_from: str | None = None) -> FitResult:
    """Inside a Ray Train worker: load a :func:`worker_config`'s dataset and features (pulled into this node's
    mirror first where the outputs live at a URI) and run ``fit`` with DDP (``prepare_model``), this worker's
    device and ``ray.train.report`` with checkpoints."""
    logging.getLogger("rmm").setLevel(logging.INFO)  # Ray's worker root handler prints it to the driver
    model_cfg: ModelConfig = config["model_cfg"]
    storage = Storage(config["output"])
    dataset_dir, feature_root = config["dataset_dir"], config["feature_root"]
    storage.pull(*model_input_files(dataset_dir, feature_root, model_cfg.features))
    data = load_dataset(storage.local / dataset_dir)
    features = {name: torch.from_numpy(load_feature(storage.local / feature_root, name))
                for name in model_cfg.features}
    report = _ray_report
    if config.get("fail_at_epoch") is not None:
        report = functools.partial(_report_or_fail, fail_at=config["fail_at_epoch"],
                                   marker=storage.local / config["run_dir"] / _FAILED_MARKER)
    return fit(model_cfg, config["train_cfg"], data, features, report=report, prepare_model=_prepare_ddp,
               resume_from=resume_from, device=ray.train.torch.get_device(),
               knn_cache_dir=storage.local / config["knn_cache_dir"])


def _prepare_ddp(model: nn.Module) -> nn.Module:
    """``prepare_model`` with DDP's ``broadcast_buffers=False``: features and the graph adjacency are
    buffers that every worker loads itself; broadcasting them would cost a feature matrix per step, and a
    sparse buffer cannot be broadcast at all. Its replacement ``forward_sync_buffers`` still broadcasts at
    start-up, so torch 2.14's deprecation warning itself says to keep ``broadcast_buffers=False``.
    ``find_unused_parameters`` only for a model that leaves parameters without gradient in some steps."""
    kwargs = {"broadcast_buffers": False,
              "find_unused_parameters": bool(getattr(model, "has_unused_parameters", False))}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs=kwargs)


def _report_or_fail(metrics: dict[str, float], checkpoint_dir: str | None, *, fail_at: int, marker: Path) -> None:
    """``_ray_report``, except that the last-ranked worker fails instead at epoch ``fail_at``, once per run."""
    context = ray.train.get_context()
    if (metrics["epoch"] == fail_at and context.get_world_rank() == context.get_world_size() - 1
            and not marker.exists()):
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        raise InjectedFailure(f"{FAIL_AT_EPOCH_ENV}={fail_at}: worker {context.get_world_rank()} fails at "
                              f"epoch {fail_at}")
    _ray_report(metrics, checkpoint_dir)


def _ray_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)
