"""The stages of a run, in order: data -> extract -> train -> tune -> report.

Each stage reads and writes directories under ``output.dir`` only, so it can run alone, be resumed, or be
submitted as its own Ray job. Ray-using modules are imported inside the stage that needs them, so
``rmm data`` and ``rmm report`` start without Ray.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rmm import console
from rmm.config import DATA_DIR, FEATURES_DIR, Config, save_snapshot
from rmm.errors import ConfigError
from rmm.runs import RESULTS_FILE, RUNS_DIR, RunRecord, first_best, record_runs
from rmm.storage import Storage

log = logging.getLogger(__name__)


def run_data(cfg: Config, fresh: bool = False) -> Path:
    """Prepare the dataset, then put the features its source ships (MMRec) in the feature store: here, because
    rmm.data does not import rmm.features."""
    from rmm.data.prepare import prepare_dataset
    from rmm.features.store import write_feature

    prepared = prepare_dataset(cfg)
    for name, matrix, manifest in prepared.imported_features():
        write_feature(cfg.feature_root, name, matrix, manifest)
    log.info("dataset written to %s", prepared.root)
    return prepared.root


def run_extract(cfg: Config, fresh: bool = False) -> dict[str, Path]:
    from rmm.features.pipeline import extract_features

    return extract_features(cfg)


def run_train(cfg: Config, fresh: bool = False) -> list[RunRecord]:
    """Train every configured model (Ray Train) and record the runs in results.json, each as soon as it
    finishes; a run whose inputs match one that already finished is not trained again unless ``fresh``.

    A model trains once, or once per seed of ``train.seeds`` (its entry's own ``train:`` may set them too). Each
    seed's run has that ``seed`` and no ``seeds`` in its train section, so it is the same run (identity), trained
    once, whether its seed came alone or in a list. Every record carries ``seed_group``
    (:func:`rmm.train.identity.seed_group`), shared by the runs whose inputs differ in the seed alone, which the
    report shows as one configuration, mean ± std over the seeds. The runs go one after another: each is already
    a Ray Train job of ``train.scaling.num_workers`` workers, and the local Ray is checked to fit one such job, so seeds
    started side by side would wait for the same CPUs or GPUs rather than finish sooner.
    """
    from rmm.train.identity import seed_group
    from rmm.train.run import train_model

    if not cfg.model:
        raise ConfigError("no model to train: add a `model:` section to the config")
    records = []
    plan = [(model, cfg.train_for(model)) for model in cfg.model]
    epochs = sum(train_cfg.epochs * len(train_cfg.seeds or (train_cfg.seed,)) for _, train_cfg in plan)
    with console.current().progress("train", epochs, "epoch", counts="epoch") as bar:
        for model, train_cfg in plan:
            for seed in train_cfg.seeds or (train_cfg.seed,):
                record = train_model(cfg, model, train_cfg=dataclasses.replace(train_cfg, seed=seed, seeds=()),
                                     fresh=fresh)
                record = dataclasses.replace(record, stage="train", seed_group=seed_group(model, record.inputs))
                record_runs(cfg.out_dir, [record])
                records.append(record)
                bar.advance_to(record.run_name, train_cfg.epochs, finished=True)  # early stopping skips the rest
    return records


def run_tune(cfg: Config, fresh: bool = False) -> list[RunRecord]:
    """Sweep the configured search space (Ray Tune) and record the best run of each model."""
    from rmm.tune.search import plan_sweeps, tune_models

    trials = sum(len(sweep.points) * sweep.num_samples for sweep in plan_sweeps(cfg))
    with console.current().progress("tune", trials, "trial", counts="trial"):
        records = tune_models(cfg, fresh=fresh)
    record_runs(cfg.out_dir, records)
    return records


def run_report(cfg: Config, fresh: bool = False) -> Path:
    from rmm.report.tables import write_report

    return write_report(cfg.out_dir)


#: stage -> runner(cfg, fresh); ``fresh`` (``--fresh``) retrains runs whose inputs are unchanged (train, tune).
STAGE_RUNNERS: dict[str, Callable[[Config, bool], Any]] = {
    "data": run_data,
    "extract": run_extract,
    "train": run_train,
    "tune": run_tune,
    "report": run_report,
}


def report_location(location: str) -> str:
    """``rmm report OUT``: (re)write the report of the outputs at ``location`` (a path or URI), pulling only what
    it reads (results.json, the run directories, the datasets' tables and the feature manifests, which tell
    whether a run's inputs changed since; no images or feature matrices); returns where ``report.md`` is."""
    from rmm.data.schema import INFO_FILE, INTERACTIONS_FILE, ITEMS_FILE
    from rmm.features.store import MANIFEST_FILE
    from rmm.report.tables import write_report

    storage = Storage(location)
    storage.pull(RESULTS_FILE, RUNS_DIR)
    for name in (INFO_FILE, ITEMS_FILE, INTERACTIONS_FILE):  # what tells whether a run's inputs changed since
        storage.pull(DATA_DIR, include=f"*/{name}")
    storage.pull(FEATURES_DIR, include=f"*/*/{MANIFEST_FILE}")
    write_report(storage.local)
    storage.push()
    return storage.where("report.md")


def run_stage(cfg: Config, stage: str, fresh: bool = False) -> Any:
    """Run one stage in the local output directory, snapshotting the resolved config first. Where ``output.dir``
    is a URI, the stage's mirror first pulls what changed there and pushes what the stage wrote afterwards,
    whether the stage succeeds or not, so nothing computed is lost with the node (a failed push after a failed
    stage is logged; the stage's own error is the one raised)."""
    storage = cfg.storage
    pulled = storage.pull()
    if pulled:
        log.info("pulled %d changed files from %s into %s", pulled, storage.location, storage.local)
    started = time.perf_counter()
    try:
        save_snapshot(cfg, cfg.out_dir)
        log.info("stage %s", stage)
        result = STAGE_RUNNERS[stage](cfg, fresh)
    except BaseException:
        try:
            _push(storage)
        except Exception as err:  # noqa: BLE001 - keep the stage's error, which says what went wrong first
            log.error("could not push the outputs of the failed stage %s to %s: %s", stage, storage.location, err)
        raise
    _push(storage)
    console.current().summary(stage, summary(cfg, stage, result), time.perf_counter() - started)
    return result


def summary(cfg: Config, stage: str, result: Any) -> str:
    """The console's one line about what a stage made of ``result`` (its runner's return value)."""
    storage = cfg.storage
    if stage == "data":
        from rmm.data.schema import INFO_FILE

        counts = json.loads((cfg.dataset_dir / INFO_FILE).read_text())["counts"]
        return (f"{cfg.dataset.name}: {counts['users']} users, {counts['items']} items, {counts['interactions']} "
                f"interactions -> {storage.location_of(cfg.dataset_dir)}")
    if stage == "extract":
        from rmm.features.store import read_manifest

        counts = [read_manifest(cfg.feature_root, name)["counts"] for name in result]
        lacking = {kind: sum(c.get(kind, 0) for c in counts) for kind in ("failed", "missing")}
        lacking_text = "".join(f", {n} {kind} item vectors (see their manifest.json)"
                               for kind, n in lacking.items() if n)
        return f"{len(result)} features{lacking_text} -> {storage.location_of(cfg.feature_root)}"
    if stage in ("train", "tune"):
        metric = next((r.train_metric for r in result if r.train_metric), None) or "recall@20"
        best = first_best(result, key=lambda r: r.valid.get(metric))
        count, noun = (len(result), "run") if stage == "train" else (sum(len(r.trials) for r in result), "trial")
        what = f"{count} {noun}{'' if count == 1 else 's'}"
        if best is None:
            return what
        searched = "".join(f" {key}={value}" for key, value in best.search.items())
        return f"{what}; best valid {metric} {best.valid[metric]:.4f}: {best.label}{searched}"
    return str(result)


def _push(storage: Storage) -> None:
    pushed = storage.push()
    if pushed:
        log.info("pushed %d new or changed files to %s", pushed, storage.location)


def run_stages(cfg: Config, stages: tuple[str, ...] | None = None, fresh: bool = False) -> None:
    """Run ``stages`` (default: those the config names) in order."""
    for stage in stages or cfg.stages:
        run_stage(cfg, stage, fresh)
