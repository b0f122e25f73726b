"""Run :func:`rmm.train.loop.fit` in Ray Train workers and write the run record.

Ray only wires here: the workers read the dataset and features from disk themselves (the driver passes
paths, never data), ``ray.train.torch.prepare_model`` wraps the model in DDP (gloo on CPU, NCCL on GPU), and
``fit``'s ``report`` hook becomes ``ray.train.report`` with a ``Checkpoint``. Rank 0's ``FitResult`` comes
back as the trainer's ``return_value``.

A run is named by its identity (:mod:`rmm.train.identity`, a content hash of everything that decides its
result): re-running the same inputs under the same output dir resumes from the latest checkpoint (Ray Train
restores it and ``fit`` continues after that epoch; the same is how ``max_failures`` recovers), or reuses the
finished run without starting Ray; changed inputs give a fresh run beside the old ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pyarrow.fs as pafs
import ray.train
import ray.train.torch
import torch
from ray.train.v2._internal.callbacks.datasets import DatasetsCallback
from ray.train.v2._internal.callbacks.placement_group_callback import PlacementGroupCleanerCallback
from ray.train.v2.torch.torch_trainer import TorchTrainer  # what ray.train.torch.TorchTrainer is in Ray Train v2
from torch import nn

from rmm import console
from rmm.cluster import init_ray
from rmm.config import Config, ModelConfig, TrainConfig, TuneConfig, check_fits, model_to_dict, save_snapshot
from rmm.data.schema import INFO_FILE, ITEMS_FILE, load_dataset
from rmm.errors import ConfigError, DataError, NotFoundError, user_error_in
from rmm.features.store import check_lineage, library_versions, load_feature, model_input_files
from rmm.models.registry import model_spec
from rmm.runs import (
    MODEL_FILE,
    PER_USER_COLD_FILE,
    PER_USER_FILE,
    RUN_FILE,
    RUNS_DIR,
    RunRecord,
    load_run_record,
    run_name,
    write_run_record,
)
from rmm.storage import RAY_RESULTS_DIR, Storage, filesystem
from rmm.train.identity import RunInputs, run_inputs
from rmm.train.loop import CHECKPOINT_INFO_FILE, FitResult, ReportFn, fit

log = logging.getLogger(__name__)

#: Item-item kNN graphs keyed by feature content and graph spec (rmm.data.knn_cache), shared by all runs in <out>.
KNN_CACHE_DIR = "cache/knn"


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

    def __init__(self, run: str, label: str, epochs: int, metric: str) -> None:
        self.run, self.label, self.epochs, self.metric = run, label, epochs, metric

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        reported = metrics[0]  # rank 0's report
        console.emit("epoch", run=self.run, label=self.label, epoch=reported["epoch"], epochs=self.epochs,
                     metric=self.metric, value=reported.get(f"valid/{self.metric}"))


def train_model(cfg: Config, model_cfg: ModelConfig, *, train_cfg: TrainConfig | None = None,
                callbacks: Sequence[Any] = (), gpus_per_worker: float | None = None,
                fresh: bool = False, wrap_report: Callable[[ReportFn], ReportFn] | None = None) -> RunRecord:
    """Train one model with Ray Train and return its run record (:class:`rmm.runs.RunRecord`).

    Args:
        cfg: the run configuration: dataset and feature locations, Ray address, output dir.
        model_cfg: the model, its features and fusion.
        train_cfg: training settings; ``cfg.train`` when None (a Tune trial passes its sampled one).
        callbacks: Ray Train ``UserCallback``s, e.g. ``TuneReportCallback()`` inside a Tune trial.
        gpus_per_worker: GPUs of each worker, a fraction to share a GPU (e.g. between Tune trials); None: one
            whole GPU per worker when ``train_cfg.scaling.use_gpu``.
        fresh: discard a checkpoint or finished run of the same identity and train from scratch.
        wrap_report: wraps each worker's report function (``ray.train.report`` with the checkpoint), e.g. to
            make a worker fail at a chosen epoch in a fault-tolerance test; sent to the workers, so picklable.

    Returns:
        The run's record; its ``run_name`` (``<label>-<identity prefix>``) names ``<out>/runs/<run_name>/`` and
        Ray's ``<out>/ray_results/<run_name>/``, and ``resumed_after_epoch`` is the checkpoint epoch the final
        attempt resumed from (after a worker failure or a re-run of the same inputs).

    Raises:
        UserError: wrong inputs (checked before any Ray work), or raised by a worker (NaN loss, bad data).
        RuntimeError: a worker failed for another reason; the message says from which epoch a rerun resumes.
    """
    train_cfg = train_cfg or cfg.train
    inputs = check_inputs(cfg, model_cfg, train_cfg)
    name = run_name(model_cfg, inputs.identity)
    if fresh:
        cfg.storage.remove(f"{RUNS_DIR}/{name}", f"{RAY_RESULTS_DIR}/{name}")
        log.info("%s: --fresh: discarded earlier checkpoints and records of run %s", model_cfg.label, name)
    else:
        finished = finished_record(cfg, name, inputs.identity)
        if finished is not None:
            log.info("%s: run %s already finished with these inputs; reusing its record (--fresh retrains)",
                     model_cfg.label, name)
            return finished
    _check_local_resources(cfg)
    init_ray(cfg.ray)
    run_dir = cfg.out_dir.resolve() / RUNS_DIR / name
    run_callbacks: list[Any] = [*callbacks, EpochProgress(name, model_cfg.label, train_cfg.epochs,
                                                          train_cfg.eval.metric)]
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
    fitted: FitResult = result.return_value  # type: ignore[attr-defined]
    record = RunRecord(
        run_name=name,
        model=model_cfg.name,
        label=model_cfg.label,
        features=tuple(model_cfg.features),
        fusion=model_cfg.fusion if model_cfg.fuses else None,
        config={"model": model_to_dict(model_cfg), "train": dataclasses.asdict(train_cfg)},
        identity=inputs.identity,
        inputs=inputs.to_dict(),
        dataset=cfg.dataset.name,
        best_epoch=fitted.best_epoch,
        valid=fitted.valid,
        test=fitted.test,
        # Test metrics on the cold items only ({} without any). An ID-only model never trained a cold item's
        # embedding, so its numbers are recorded but flagged, and the report shows them as n/a.
        test_cold=fitted.test_cold,
        test_cold_id_only=not model_spec(model_cfg.name).uses_features,
        train_seconds=fitted.train_seconds,
        history=tuple(fitted.history),
        resumed_after_epoch=fitted.resumed_after_epoch,
        run_dir=str(run_dir),
        seed=train_cfg.seed,
        library_versions=library_versions(),
    )
    # The run's own config: this model and these train settings, no sweep.
    run_cfg = cfg.replace(train=train_cfg, model=(model_cfg,), tune=TuneConfig())
    _write_run(run_dir, record, fitted, run_cfg, result.path)
    return record


def finished_record(cfg: Config, name: str, identity: str) -> RunRecord | None:
    """The record of run ``name`` when it finished with exactly this identity (its ``run.json`` and weights are
    there), else None. A run directory of another identity under the same name (a hash-prefix clash) is
    never reused."""
    cfg.storage.pull(f"{RUNS_DIR}/{name}")  # a trial may run on another node than the one that trained it
    run_dir = cfg.out_dir / RUNS_DIR / name
    if not (run_dir / RUN_FILE).exists() or not (run_dir / MODEL_FILE).exists():
        return None
    record = load_run_record(cfg.out_dir, name)
    if record.identity != identity:
        log.warning("run directory %s holds another run (identity %s, expected %s); training anew",
                    run_dir, record.identity, identity)
        return None
    return record


def worker_config(cfg: Config, model_cfg: ModelConfig, *, name: str, train_cfg: TrainConfig,
                  wrap_report: Callable[[ReportFn], ReportFn] | None = None) -> dict[str, Any]:
    """The ``train_loop_config`` of one run's workers: where the outputs live and, relative to it, the dataset,
    features, run and kNN cache directories (never data), plus the model and train settings and
    :func:`train_model`'s ``wrap_report``. A local ``output`` is absolute (workers do not run in the driver's
    working directory); a URI is kept, so a worker on another node reads the same store through its own mirror."""
    storage = cfg.storage
    return {"output": storage.where(),
            "dataset_dir": storage.relative(cfg.dataset_dir), "feature_root": storage.relative(cfg.feature_root),
            "run_dir": f"{RUNS_DIR}/{name}", "knn_cache_dir": KNN_CACHE_DIR,
            "model_cfg": model_cfg, "train_cfg": train_cfg, "wrap_report": wrap_report}


def check_inputs(cfg: Config, model_cfg: ModelConfig, train_cfg: TrainConfig) -> RunInputs:
    """Fail in the driver, before any Ray work, on anything that would fail or mislead a run: a wrong
    model/feature choice, a missing dataset or feature, a feature made from other items than the dataset's
    (lineage), a split without valid or test interactions, a cut-off beyond the number of items. Returns the
    run's inputs (its identity)."""
    model_spec(model_cfg.name).check_inputs(model_cfg.features, model_cfg.fusion)
    storage = cfg.storage
    storage.pull(*model_input_files(storage.relative(cfg.dataset_dir), storage.relative(cfg.feature_root),
                                    model_cfg.features))
    if not (cfg.dataset_dir / INFO_FILE).exists():
        raise NotFoundError(f"no prepared dataset at {cfg.dataset_dir}; run `rmm data prepare CONFIG` first")
    inputs = run_inputs(cfg, model_cfg, train_cfg)  # raises DataError if the dataset files were edited
    counts = json.loads((cfg.dataset_dir / INFO_FILE).read_text())["counts"]
    for split in ("train", "valid", "test"):
        if not counts.get(split):
            raise DataError(f"dataset {cfg.dataset_dir} has no {split} interactions, so {split} metrics cannot be "
                            f"computed; re-prepare it with dataset.split_ratios that give every part a share")
    if max(train_cfg.eval.topk) > counts["items"]:
        raise ConfigError(f"train.eval.topk {list(train_cfg.eval.topk)} asks for cut-offs beyond the "
                          f"{counts['items']} items of dataset {cfg.dataset.name!r}; lower train.eval.topk")
    for name in model_cfg.features:
        check_lineage(cfg.feature_root, name, inputs.dataset[ITEMS_FILE], cfg.dataset_dir)
    return inputs


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
    epoch = last_checkpoint_epoch(ray_dir)
    resume = (f"rerun the same command to resume from epoch {epoch}" if epoch is not None else
              "it wrote no checkpoint yet, so a rerun starts from the beginning")
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    cause = lines[-1] if lines else type(error).__name__  # a worker's traceback ends with its exception
    return RuntimeError(f"training run {name} failed ({cause}); {resume} (or set "
                        f"train.fault_tolerance.max_failures to let Ray retry by itself)")


def last_checkpoint_epoch(ray_dir: str) -> int | None:
    """The epoch of the newest checkpoint Ray Train kept under ``ray_dir`` (a local path or URI), from the
    small ``checkpoint.json`` each checkpoint holds; None without one."""
    fs, root = filesystem(ray_dir)
    try:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        return None
    epochs = []
    for info in found:
        if info.type == pafs.FileType.File and info.base_name == CHECKPOINT_INFO_FILE:
            with fs.open_input_stream(info.path) as stream:
                epochs.append(int(json.loads(stream.read().decode())["epoch"]))
    return max(epochs, default=None)


def _write_run(run_dir: Path, record: RunRecord, fitted: FitResult, cfg: Config, ray_path: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fitted.test_per_user.to_parquet(run_dir / PER_USER_FILE, index=False)
    if len(fitted.test_cold_per_user):
        fitted.test_cold_per_user.to_parquet(run_dir / PER_USER_COLD_FILE, index=False)
    write_run_record(run_dir, dataclasses.replace(record, ray_path=ray_path))
    save_snapshot(cfg, run_dir)
    log.info("%s: test %s; record in %s", record.label, record.test, run_dir)


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
    wrap_report = config.get("wrap_report")
    report = _ray_report if wrap_report is None else wrap_report(_ray_report)
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


def _ray_report(metrics: dict[str, float], checkpoint_dir: str | None) -> None:
    checkpoint = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
    ray.train.report(metrics, checkpoint=checkpoint)
