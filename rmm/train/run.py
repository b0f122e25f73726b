"""Train one model and write its run record: check the inputs, name the run by its identity, train it (in this
process or in Ray Train workers, ``train.scaling.launcher``), write ``run.json``, per-user metrics and the
config snapshot.

A run is named by its identity (:mod:`rmm.train.identity`, a content hash of everything that decides its
result): re-running the same inputs under the same output dir resumes from the latest checkpoint (``fit``
continues after that epoch; the same is how Ray Train's ``max_failures`` recovers), or reuses the finished run
without training; changed inputs give a fresh run beside the old ones.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rmm.config import Config, ModelConfig, TrainConfig, TuneConfig, model_to_dict, save_snapshot
from rmm.data.schema import INFO_FILE, ITEMS_FILE
from rmm.errors import ConfigError, DataError, NotFoundError
from rmm.features.store import check_lineage, library_versions, model_input_files
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
from rmm.storage import RAY_RESULTS_DIR
from rmm.train.identity import RunInputs, run_inputs
from rmm.train.in_process import fit_in_process, trains_in_process
from rmm.train.loop import FitResult, ReportFn

log = logging.getLogger(__name__)


def train_model(cfg: Config, model_cfg: ModelConfig, *, train_cfg: TrainConfig | None = None,
                callbacks: Sequence[Any] = (), gpus_per_worker: float | None = None,
                fresh: bool = False, wrap_report: Callable[[ReportFn], ReportFn] | None = None) -> RunRecord:
    """Train one model and return its run record (:class:`rmm.runs.RunRecord`): in this process or in Ray Train
    workers, as ``train_cfg.scaling.launcher`` says (:func:`rmm.train.in_process.trains_in_process`).

    Args:
        cfg: the run configuration: dataset and feature locations, Ray address, output dir.
        model_cfg: the model, its features and fusion.
        train_cfg: training settings; ``cfg.train`` when None (a Tune trial passes its sampled one).
        callbacks: Ray Train ``UserCallback``s, e.g. ``TuneReportCallback()`` inside a Tune trial (the run then
            trains in Ray Train whatever the launcher).
        gpus_per_worker: GPUs of each worker, a fraction to share a GPU (e.g. between Tune trials); None: one
            whole GPU per worker when ``train_cfg.scaling.use_gpu``.
        fresh: discard a checkpoint or finished run of the same identity and train from scratch.
        wrap_report: wraps each worker's report function (which reports the evaluation and keeps the
            checkpoint), e.g. to make a worker fail at a chosen epoch in a fault-tolerance test; sent to Ray
            Train workers, so picklable.

    Returns:
        The run's record; its ``run_name`` (``<label>-<identity prefix>``) names ``<out>/runs/<run_name>/`` and
        Ray's ``<out>/ray_results/<run_name>/``, and ``resumed_after_epoch`` is the checkpoint epoch the final
        attempt resumed from (after a worker failure or a re-run of the same inputs).

    Raises:
        UserError: wrong inputs (checked before any training), or raised while training (NaN loss, bad data).
        RuntimeError: training failed for another reason; the message says from which epoch a rerun resumes.
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
    run_dir = cfg.out_dir.resolve() / RUNS_DIR / name
    if not callbacks and trains_in_process(cfg, train_cfg):  # callbacks are Ray Train's: such a run uses it
        fitted, ray_path = fit_in_process(cfg, model_cfg, name=name, train_cfg=train_cfg, wrap_report=wrap_report)
    else:
        from rmm.train.ray_trainer import fit_with_ray_train  # Ray Train's imports only where a run uses it

        fitted, ray_path = fit_with_ray_train(cfg, model_cfg, name=name, train_cfg=train_cfg, callbacks=callbacks,
                                              gpus_per_worker=gpus_per_worker, wrap_report=wrap_report)
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
    _write_run(run_dir, record, fitted, run_cfg, ray_path)
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


def _write_run(run_dir: Path, record: RunRecord, fitted: FitResult, cfg: Config, ray_path: str) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    fitted.test_per_user.to_parquet(run_dir / PER_USER_FILE, index=False)
    if len(fitted.test_cold_per_user):
        fitted.test_cold_per_user.to_parquet(run_dir / PER_USER_COLD_FILE, index=False)
    write_run_record(run_dir, dataclasses.replace(record, ray_path=ray_path))
    save_snapshot(cfg, run_dir)
    log.info("%s: test %s; record in %s", record.label, record.test, run_dir)
