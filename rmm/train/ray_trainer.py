"""Run :func:`rmm.train.loop.fit` in Ray Train workers and write the run record.

Ray only wires here: the workers read the dataset and features from disk themselves (the driver passes
paths, never data), ``ray.train.torch.prepare_model`` wraps the model in DDP (gloo on CPU, NCCL on GPU), and
``fit``'s ``report`` hook becomes ``ray.train.report`` with a ``Checkpoint``. Rank 0's ``FitResult`` comes
back as the trainer's ``return_value``.

A run is named: re-running the same ``run_name`` under the same output dir resumes from its latest checkpoint
(Ray Train restores it and ``fit`` continues after that epoch), which is also how ``max_failures`` recovers.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
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
from rmm.features.store import library_versions, load_feature, read_manifest
from rmm.models import get_model_class
from rmm.report.results import MODEL_FILE, PER_USER_FILE, RUN_FILE
from rmm.train.loop import FitResult, fit

log = logging.getLogger(__name__)

#: Item-item kNN graphs keyed by feature content and graph spec (rmm.data.knn_cache), shared by all runs in <out>.
KNN_CACHE_DIR = "cache/knn"


def train_model(cfg: Config, model_cfg: ModelConfig, *, run_name: str, train_cfg: TrainConfig | None = None,
                callbacks: Sequence[Any] = ()) -> dict[str, Any]:
    """Train one model with Ray Train and return its run record (DESIGN.md results contract).

    Args:
        cfg: the run configuration: dataset and feature locations, Ray address, output dir.
        model_cfg: the model, its features and fusion.
        run_name: unique name of the run: Ray results go to ``<out>/ray_results/<run_name>``, the record to
            ``<out>/runs/<run_name>/``.
        train_cfg: training settings; ``cfg.train`` when None (a Tune trial passes its sampled one).
        callbacks: Ray Train ``UserCallback``s, e.g. ``TuneReportCallback()`` inside a Tune trial.

    Returns:
        ``{"model", "label", "features", "fusion", "config": {"model", "train"}, "best_epoch", "valid",
        "test", "train_seconds", "history", "run_name", "run_dir"}``; ``valid`` and ``test`` map
        ``<metric>@K`` to the mean over users, ``fusion`` is None unless several features were fused.
    """
    train_cfg = train_cfg or cfg.train
    _check_inputs(cfg, model_cfg)
    init_ray(cfg.ray)
    out_dir = cfg.out_dir.resolve()
    run_dir = out_dir / "runs" / run_name
    trainer = ray.train.torch.TorchTrainer(
        _train_worker,
        train_loop_config={"dataset_dir": str(cfg.dataset_dir.resolve()),
                           "feature_root": str(cfg.feature_root.resolve()),
                           "run_dir": str(run_dir), "knn_cache_dir": str(out_dir / KNN_CACHE_DIR),
                           "model_cfg": model_cfg, "train_cfg": train_cfg},
        scaling_config=ray.train.ScalingConfig(num_workers=train_cfg.num_workers, use_gpu=train_cfg.use_gpu,
                                               resources_per_worker={"CPU": train_cfg.cpus_per_worker}),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(out_dir / "ray_results"),
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
        "fusion": model_cfg.fusion if len(model_cfg.features) > 1 else None,
        "config": {"model": model_to_dict(model_cfg), "train": dataclasses.asdict(train_cfg)},
        "best_epoch": fitted.best_epoch,
        "valid": fitted.valid,
        "test": fitted.test,
        "train_seconds": fitted.train_seconds,
        "history": fitted.history,
        "run_name": run_name,
        "run_dir": str(run_dir),
    }
    # The run's own config: this model and these train settings, no sweep.
    run_cfg = cfg.replace(train=train_cfg, model=(model_cfg,), tune=TuneConfig())
    _write_run(run_dir, record, fitted, run_cfg, result.path)
    return record


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
    """One Ray Train worker: load inputs from disk, resume if Ray restored a checkpoint, run ``fit``."""
    logging.getLogger("rmm").setLevel(logging.INFO)  # Ray's worker root handler prints it to the driver
    model_cfg: ModelConfig = config["model_cfg"]
    data = load_dataset(config["dataset_dir"])
    features = {name: torch.from_numpy(load_feature(config["feature_root"], name)) for name in model_cfg.features}
    run = functools.partial(
        fit, model_cfg, config["train_cfg"], data, features, report=_ray_report, prepare_model=_prepare_ddp,
        device=ray.train.torch.get_device(), knn_cache_dir=config["knn_cache_dir"])
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fitted = run()
    else:
        with checkpoint.as_directory() as directory:
            fitted = run(resume_from=directory)
    if ray.train.get_context().get_world_rank() == 0:
        run_dir = Path(config["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        torch.save(fitted.best_state, run_dir / MODEL_FILE)
    return dataclasses.replace(fitted, best_state=None)  # the weights travel by file, not through Ray


def _prepare_ddp(model: nn.Module) -> nn.Module:
    """``prepare_model`` with DDP's ``broadcast_buffers=False``: features and the graph adjacency are
    buffers that every worker loads itself; broadcasting them would cost a feature matrix per step, and a
    sparse buffer cannot be broadcast at all. Its replacement ``forward_sync_buffers`` still broadcasts at
    start-up, so torch 2.14's deprecation warning itself says to keep ``broadcast_buffers=False``."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
        return ray.train.torch.prepare_model(model, parallel_strategy_kwargs={"broadcast_buffers": False})


def _ray_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)
