"""Train a run in Ray Train workers (several workers, a cluster, automatic restarts, a sweep's trials; one worker
on a local machine trains in process instead, :mod:`rmm.train.in_process`).

Ray only wires here: the workers read the dataset and features from disk themselves (the driver passes
paths, never data), ``ray.train.torch.prepare_model`` wraps the model in DDP (gloo on CPU, NCCL on GPU), and
``fit``'s ``report`` hook becomes ``ray.train.report`` with a ``Checkpoint``. Rank 0's ``FitResult`` comes
back as the trainer's ``return_value``. Ray Train restores a run's latest checkpoint after a worker failure
(``max_failures``) and on a rerun of the same inputs, and ``fit`` continues after that epoch.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.torch.torch_trainer import TorchTrainer  # what ray.train.torch.TorchTrainer is in Ray Train v2
from torch import nn

from rmm import console
from rmm.cluster import init_ray
from rmm.config import Config, ModelConfig, TrainConfig, check_fits
from rmm.errors import ConfigError, user_error_in
from rmm.storage import RAY_RESULTS_DIR
from rmm.train.loop import FitResult, ReportFn
from rmm.train.worker import epoch_event, fit_from_config, rerun_hint, save_best_weights, worker_config


class LeanTorchTrainer(TorchTrainer):
    """``TorchTrainer`` without two of Ray Train 2.60's helper actors, each one more Python process per run
    (~0.1 GB and seconds of start-up) doing nothing for rmm:

    - the dataset manager, which shards ``datasets`` (rmm passes none: workers read their data from disk);
    - on a local Ray (``local_ray``), the detached PlacementGroupCleaner, which removes a run's placement group
      if the run's controller dies before the driver. It asks whether the controller lives through Ray's state
      API, served by the dashboard, and finds the cluster as ``ray.init()`` would: without a dashboard it fails,
      and with several Ray instances on the machine it raises ``ConnectionError: Found multiple active Ray
      instances``. A local Ray ends with its driver, placement groups included. Joining a cluster keeps it.
    """

    def __init__(self, *args: Any, local_ray: bool, **kwargs: Any) -> None:
        self._local_ray = local_ray
        super().__init__(*args, **kwargs)

    def _create_default_callbacks(self) -> list[Any]:
        unused: tuple[type, ...] = (DatasetsCallback,) if not self.datasets else ()
        if self._local_ray:
            unused += (PlacementGroupCleanerCallback,)
        return [callback for callback in super()._create_default_callbacks() if not isinstance(callback, unused)]


class EpochProgress(ray.train.UserCallback):
    """Each evaluation that the workers report (``ray.train.report``), sent on to the console of the driver that
    started the run (:func:`rmm.console.emit`: it runs in Ray Train's controller actor, whose output Ray streams
    to the driver), where it advances the train stage's bar or sets the tune bar's status."""

    def __init__(self, run: str, label: str, train_cfg: TrainConfig) -> None:
        self.run, self.label, self.train_cfg = run, label, train_cfg

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        console.emit(**epoch_event(self.run, self.label, self.train_cfg, metrics[0]))  # rank 0's report


def fit_with_ray_train(cfg: Config, model_cfg: ModelConfig, *, name: str, train_cfg: TrainConfig,
                       callbacks: Sequence[Any] = (), gpus_per_worker: float | None = None,
                       wrap_report: Callable[[ReportFn], ReportFn] | None = None) -> tuple[FitResult, str]:
    """Train run ``name`` with Ray Train (a local Ray started unless one runs or ``ray.address`` is given);
    returns rank 0's result (best weights saved to the run directory, not in it) and Ray Train's directory of
    the run. The arguments are :func:`rmm.train.run.train_model`'s.

    Raises:
        UserError: raised in a worker (NaN loss, bad data), as itself.
        RuntimeError: a worker failed for another reason; the message says from which epoch a rerun resumes.
    """
    _check_local_resources(cfg)
    init_ray(cfg.ray)
    run_callbacks: list[Any] = [*callbacks, EpochProgress(name, model_cfg.label, train_cfg)]
    trainer = LeanTorchTrainer(
        _train_worker,
        local_ray=cfg.ray.address is None,
        train_loop_config=worker_config(cfg, model_cfg, name=name, train_cfg=train_cfg, wrap_report=wrap_report),
        scaling_config=ray.train.ScalingConfig(
            num_workers=train_cfg.scaling.num_workers, use_gpu=train_cfg.scaling.use_gpu or bool(gpus_per_worker),
            resources_per_worker={"CPU": train_cfg.scaling.cpus_per_worker,
                                  **({"GPU": gpus_per_worker} if gpus_per_worker else {})}),
        run_config=ray.train.RunConfig(
            name=name,
            storage_path=cfg.storage.where(RAY_RESULTS_DIR),
            failure_config=ray.train.FailureConfig(max_failures=train_cfg.fault_tolerance.max_failures),
            # Checkpoints exist to resume; the latest one holds the best state too.
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            callbacks=run_callbacks,
        ),
    )
    try:
        result = trainer.fit()
    except ray.train.TrainingFailedError as err:
        raise _failure(err, name, cfg.storage.where(f"{RAY_RESULTS_DIR}/{name}")) from err
    # Ray Train v2's Result has return_value; its fit() is annotated with v1's Result class, which has not.
    return result.return_value, result.path  # type: ignore[attr-defined]


def _check_local_resources(cfg: Config) -> None:
    """Before starting a local Ray (none is running and no address is given): fail when the machine cannot
    place the run's workers, instead of letting Ray wait for them forever."""
    if ray.is_initialized() or cfg.ray.address is not None:
        return
    num_gpus = cfg.ray.num_gpus if cfg.ray.num_gpus is not None else torch.cuda.device_count()
    try:
        check_fits(cfg, cfg.ray.num_cpus or os.cpu_count() or 1, num_gpus)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def _failure(error: ray.train.TrainingFailedError, name: str, ray_dir: str) -> Exception:
    """What a failed Ray Train run raises in the driver: a user error raised in a worker, as itself (one line
    at the command line); otherwise a RuntimeError saying from which checkpoint epoch a rerun resumes."""
    user_error = user_error_in(error)
    if user_error is not None:
        return type(user_error)(f"run {name}: {user_error}")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(error).__name__  # a worker's traceback ends with its exception
    return RuntimeError(f"training run {name} failed ({cause}); {rerun_hint(ray_dir)} (or set "
                        f"train.fault_tolerance.max_failures to let Ray retry by itself)")


def _train_worker(config: dict[str, Any]) -> FitResult:
    """One Ray Train worker: resume if Ray restored a checkpoint, run ``fit``, save the best weights (rank 0)."""
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is None:
        fitted = fit_in_worker(config)
    else:
        with checkpoint.as_directory() as directory:
            fitted = fit_in_worker(config, resume_from=directory)
    if ray.train.get_context().get_world_rank() == 0:
        return save_best_weights(config, fitted)
    return dataclasses.replace(fitted, best_state=None)


def fit_in_worker(config: dict[str, Any], *, resume_from: str | None = None) -> FitResult:
    """Inside a Ray Train worker: :func:`rmm.train.worker.fit_from_config` with DDP (``prepare_model``), this
    worker's device and ``ray.train.report`` with checkpoints."""
    logging.getLogger("rmm").setLevel(logging.INFO)  # Ray's worker root handler prints it to the driver
    return fit_from_config(config, _ray_report, device=ray.train.torch.get_device(), prepare_model=_prepare_ddp,
                           resume_from=resume_from)


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


def _ray_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)
