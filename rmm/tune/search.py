"""Ray Tune sweeps: one Tuner per configured model, each trial a Ray Train run of that model.

Ray Train 2.60 (Train V2) does not accept a trainer inside ``Tuner``; a trial is a function that launches the
``TorchTrainer`` and forwards its reports with ``TuneReportCallback`` (NOTES.md). The base config reaches
trials by reference through ``tune.with_parameters``; only the sampled values travel in ``param_space``.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from rmm.cluster import init_ray
from rmm.config import Config, ModelConfig, tuned_models
from rmm.tune.space import apply_params

log = logging.getLogger(__name__)


def to_tune_domain(spec: Mapping[str, Any]) -> Any:
    """``{loguniform: [a, b]}`` -> ``tune.loguniform(a, b)`` (and choice, grid, uniform, randint)."""
    kind, values = next(iter(spec.items()))
    if kind == "grid":
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*values)


def _trial(params: dict[str, Any], base: Config, model: ModelConfig, prefix: str) -> None:
    """One trial: train ``model`` with ``params`` applied, then report the run's name with its metrics."""
    from rmm.train.ray_trainer import train_model

    cfg, trial_model = apply_params(base, model, params)
    cfg = cfg.replace(train=dataclasses.replace(cfg.train, num_workers=base.tune.num_workers))
    name = f"{prefix}-{tune.get_context().get_trial_id()}"
    record = train_model(cfg, trial_model, run_name=name, callbacks=[TuneReportCallback()])
    tune.report({**{f"valid/{k}": v for k, v in record["valid"].items()}, "run_name": name})


def tune_models(cfg: Config) -> list[dict[str, Any]]:
    """Sweep each tuned model; return the run record of each model's best trial (by validation metric),
    whose test metrics come from that same run, marked ``stage: tune`` with the sweep's summary."""
    from rmm.report.results import load_run_record
    from rmm.stages import run_name

    init_ray(cfg.ray)
    # Tune runs each trial in its own directory: a relative output.dir must not resolve there.
    cfg = cfg.replace(output=dataclasses.replace(cfg.output, dir=str(cfg.out_dir.resolve())))
    metric = f"valid/{cfg.train.metric}"
    storage = str((cfg.out_dir / "tune").resolve())
    records = []
    for index, model in enumerate(tuned_models(cfg)):
        prefix = run_name("tune", index, model)
        trainable = tune.with_resources(tune.with_parameters(_trial, base=cfg, model=model, prefix=prefix),
                                        {"cpu": cfg.tune.cpus_per_trial, "gpu": cfg.tune.gpus_per_trial})
        path = f"{storage}/{prefix}"
        if tune.Tuner.can_restore(path):
            log.info("resuming sweep %s", path)
            tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
        else:
            scheduler = (tune.schedulers.ASHAScheduler(time_attr="training_iteration")
                         if cfg.tune.scheduler == "asha" else tune.schedulers.FIFOScheduler())
            tuner = tune.Tuner(
                trainable,
                param_space={key: to_tune_domain(spec) for key, spec in cfg.tune.search.items()},
                tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=cfg.tune.num_samples,
                                            scheduler=scheduler,
                                            max_concurrent_trials=cfg.tune.max_concurrent_trials),
                run_config=tune.RunConfig(name=prefix, storage_path=storage, verbose=1),
            )
        grid = tuner.fit()
        finished = [r for r in grid if r.error is None and r.metrics and "run_name" in r.metrics]
        if not finished:
            raise RuntimeError(f"sweep {prefix}: no trial finished; see {path} for the trial errors")
        best = max(finished, key=lambda r: r.metrics[metric])
        record = load_run_record(cfg.out_dir, best.metrics["run_name"])
        record.update(stage="tune", run_name=prefix, best_trial=best.metrics["run_name"],
                      search={k: best.config[k] for k in cfg.tune.search},
                      trials=[{"run_name": r.metrics["run_name"], metric: r.metrics[metric],
                               "params": {k: r.config[k] for k in cfg.tune.search}} for r in finished])
        records.append(record)
    return records
