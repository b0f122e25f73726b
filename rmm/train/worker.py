"""What a training process does with a run, wherever it runs (a Ray Train worker, :mod:`rmm.train.ray_trainer`,
or the command's own process, :mod:`rmm.train.in_process`): read the dataset and features from the paths it is
given, ``fit``, save the best weights. No Ray here.

A run's checkpoints live under ``<out>/ray_results/<run name>/`` whichever launcher wrote them, each a directory
with ``state.pt`` and ``checkpoint.json`` (``{"epoch": N}``), so a rerun resumes from the newest one either way.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from typing import Any

import pyarrow.fs as pafs
import torch
from torch import nn

from rmm.config import Config, ModelConfig, TrainConfig
from rmm.data.schema import load_dataset
from rmm.features.store import load_feature, model_input_files
from rmm.runs import MODEL_FILE, RUNS_DIR
from rmm.storage import Storage, filesystem
from rmm.train.loop import CHECKPOINT_INFO_FILE, FitResult, ReportFn, fit

#: Item-item kNN graphs keyed by feature content and graph spec (rmm.data.knn_cache), shared by all runs in <out>.
KNN_CACHE_DIR = "cache/knn"
#: Suffix of a checkpoint directory still being written; never resumed from.
PARTIAL_SUFFIX = ".partial"


def worker_config(cfg: Config, model_cfg: ModelConfig, *, name: str, train_cfg: TrainConfig,
                  wrap_report: Callable[[ReportFn], ReportFn] | None = None) -> dict[str, Any]:
    """What a training process is handed: where the outputs live and, relative to it, the dataset, features,
    run and kNN cache directories (never data), plus the model and train settings and ``wrap_report`` (wraps
    the report function, e.g. to fail at a chosen epoch in a fault-tolerance test). A local ``output`` is
    absolute (Ray Train workers do not run in the driver's working directory); a URI is kept, so a worker on
    another node reads the same store through its own mirror."""
    storage = cfg.storage
    return {"output": storage.where(),
            "dataset_dir": storage.relative(cfg.dataset_dir), "feature_root": storage.relative(cfg.feature_root),
            "run_dir": f"{RUNS_DIR}/{name}", "knn_cache_dir": KNN_CACHE_DIR,
            "model_cfg": model_cfg, "train_cfg": train_cfg, "wrap_report": wrap_report}


def fit_from_config(config: dict[str, Any], report: ReportFn, *, device: torch.device | str,
                    prepare_model: Callable[[nn.Module], nn.Module] | None = None,
                    resume_from: str | None = None) -> FitResult:
    """Load a :func:`worker_config`'s dataset and features (pulled into this node's mirror first where the
    outputs live at a URI) and run ``fit`` with ``report`` (wrapped by the config's ``wrap_report``)."""
    model_cfg: ModelConfig = config["model_cfg"]
    storage = Storage(config["output"])
    dataset_dir, feature_root = config["dataset_dir"], config["feature_root"]
    storage.pull(*model_input_files(dataset_dir, feature_root, model_cfg.features))
    data = load_dataset(storage.local / dataset_dir)
    features = {name: torch.from_numpy(load_feature(storage.local / feature_root, name))
                for name in model_cfg.features}
    wrap_report = config.get("wrap_report")
    return fit(model_cfg, config["train_cfg"], data, features,
               report=report if wrap_report is None else wrap_report(report), prepare_model=prepare_model,
               resume_from=resume_from, device=device, knn_cache_dir=storage.local / config["knn_cache_dir"])


def save_best_weights(config: dict[str, Any], fitted: FitResult) -> FitResult:
    """Write the best state to the run directory (pushed where the outputs live at a URI) and return the result
    without it: the weights travel by file, never through Ray."""
    storage = Storage(config["output"])
    run_dir = storage.local / config["run_dir"]
    run_dir.mkdir(parents=True, exist_ok=True)
    torch.save(fitted.best_state, run_dir / MODEL_FILE)
    storage.push(f"{config['run_dir']}/{MODEL_FILE}")
    return dataclasses.replace(fitted, best_state=None)


def epoch_event(run: str, label: str, train_cfg: TrainConfig, metrics: dict[str, Any]) -> dict[str, Any]:
    """The console's ``epoch`` event (:func:`rmm.console.emit`) of one evaluation's reported ``metrics``."""
    metric = train_cfg.eval.metric
    return {"kind": "epoch", "run": run, "label": label, "epoch": metrics["epoch"], "epochs": train_cfg.epochs,
            "metric": metric, "value": metrics.get(f"valid/{metric}")}


def checkpoints(ray_dir: str) -> list[tuple[int, str]]:
    """``(epoch, directory)`` of every finished checkpoint under ``ray_dir`` (a local path or URI), oldest epoch
    first, read off the small ``checkpoint.json`` each holds; [] without any."""
    fs, root = filesystem(ray_dir)
    try:
        found = fs.get_file_info(pafs.FileSelector(root, recursive=True, allow_not_found=True))
    except OSError:
        return []
    kept = []
    for info in found:
        directory = info.path.rsplit("/", 1)[0]
        if (info.type == pafs.FileType.File and info.base_name == CHECKPOINT_INFO_FILE
                and not directory.endswith(PARTIAL_SUFFIX)):
            with fs.open_input_stream(info.path) as stream:
                kept.append((int(json.loads(stream.read().decode())["epoch"]), directory))
    return sorted(kept)


def last_checkpoint_epoch(ray_dir: str) -> int | None:
    """The epoch of the newest checkpoint under ``ray_dir``; None without one."""
    found = checkpoints(ray_dir)
    return found[-1][0] if found else None


def rerun_hint(ray_dir: str) -> str:
    """What rerunning a failed run does: resume from its newest checkpoint, or start over without one."""
    epoch = last_checkpoint_epoch(ray_dir)
    return (f"rerun the same command to resume from epoch {epoch}" if epoch is not None else
            "it wrote no checkpoint yet, so a rerun starts from the beginning")
