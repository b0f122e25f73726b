"""Ray Tune sweeps over models x searched values (features, fusion, hyperparameters); each trial a Ray Train run;
then the best trial of every (model, features, fusion) cell becomes a ``results.json`` record.

With the built-in random/grid search, all tuned models run in one Tuner (``max_concurrent_trials`` fills the
cluster across models and representations); a grid point names its model entry. Optuna and HyperOpt optimise
within one cell at a time, so they get one Tuner per (model, grid point).

Ray Train 2.60 (Train V2) does not accept a trainer inside ``Tuner``; a trial is a function that launches the
``TorchTrainer`` and forwards its per-evaluation reports with ``TuneReportCallback``, which is what
ASHA decides on (``time_attr=training_iteration``: one iteration per validation). The base config and the model
entries reach trials by reference through ``tune.with_parameters``; only the searched values travel in
``param_space``.

Resuming: a sweep whose experiment directory ``<out>/tune/<sweep>`` exists is resumed with ``Tuner.restore``
(finished trials are not run again; unfinished ones restart and their Ray Train run resumes from its last
checkpoint). A trial is a training run named by its identity (:mod:`rmm.train.identity`), so a trial whose run
already finished with the same inputs (in this sweep, an earlier one or ``rmm train``) reports that record
instead of training again. A sweep started with another search space, base config or dataset is refused, not
silently mixed; ``fresh`` (``--fresh``) starts it anew.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.search import BasicVariantGenerator, ConcurrencyLimiter

from rmm import console
from rmm.cluster import init_ray
from rmm.config import SEEDS_WITHOUT_TUNE, Config, ConfigError, ModelConfig, TrainConfig, model_to_dict, tuned_models
from rmm.config.search import FEATURES_KEY, apply_params, effective_params, features_value, max_evaluations, model_space
from rmm.data.schema import dataset_fingerprint
from rmm.errors import user_error_in
from rmm.runs import RUNS_DIR, RunRecord, load_run_record, readable_name
from rmm.storage import TUNE_DIR, join_location, read_text, write_text
from rmm.train.identity import RUNTIME_TRAIN_FIELDS
from rmm.tune.cells import ERROR, FINISHED, STOPPED, TrialOutcome, best_per_cell

log = logging.getLogger(__name__)

#: The ``param_space`` key holding a trial's grid point: dotted key -> value, plus ENTRY_KEY.
GRID_KEY = "grid"
#: The grid point's key naming the trial's model entry (its index among the tuned models).
ENTRY_KEY = "entry"
#: Name of the one Tuner of a random/grid search over all tuned models.
JOINT_SWEEP = "tune-sweep"
#: search_alg -> (module it needs, the rmm extra that installs it).
OPTIONAL_SEARCH_ALGS = {"optuna": ("optuna", "optuna"), "hyperopt": ("hyperopt", "hyperopt")}


@dataclasses.dataclass(frozen=True)
class Sweep:
    """One Tuner.

    Attributes:
        name: experiment directory under ``<out>/tune/``.
        points: grid points, each with ENTRY_KEY (the model entry) and the dotted keys that apply to it.
        sampled: sampled distributions (dotted key -> ``{kind: values}``).
        num_samples: samples per grid point (1 where nothing sampled applies: more would repeat one trial).
        search_alg: random, grid, optuna or hyperopt.
    """

    name: str
    points: tuple[dict[str, Any], ...]
    sampled: dict[str, dict[str, Any]]
    num_samples: int
    search_alg: str

    def param_space(self) -> dict[str, Any]:
        space = {key: to_tune_domain(spec, key) for key, spec in self.sampled.items()}
        space[GRID_KEY] = tune.grid_search(list(self.points)) if len(self.points) > 1 else dict(self.points[0])
        return space


def plan_sweeps(cfg: Config) -> list[Sweep]:
    """The Tuners of ``cfg``'s sweep.

    random/grid: one Tuner for every tuned model whose points take the sampled keys, and one (a single sample
    per point) for the models to which none of the sampled keys apply. optuna/hyperopt: one Tuner per
    (model, grid point) with something to sample; the rest as for random.
    """
    tune_cfg = cfg.tune
    joint: list[dict[str, Any]] = []
    unsampled: list[dict[str, Any]] = []
    sampled_keys: dict[str, dict[str, Any]] = {}
    per_point: list[Sweep] = []
    for index, model in enumerate(tuned_models(cfg)):
        search = cfg.search_for(model)
        space = model_space(search, model)
        points = [{ENTRY_KEY: index, **point} for point in space.points]
        if not space.sampled and any("grid" not in spec for spec in search.values()):
            unsampled += points
        elif tune_cfg.search_alg in OPTIONAL_SEARCH_ALGS and space.sampled:
            per_point += [Sweep(f"{cell_name(index, apply_params(cfg, model, plain)[1])}-p{j:02d}", (point,),
                                space.sampled, tune_cfg.num_samples, tune_cfg.search_alg)
                          for j, (plain, point) in enumerate(zip(space.points, points, strict=True))]
        else:
            joint += points
            sampled_keys.update(space.sampled)
    sweeps = []
    if joint and tune_cfg.search_alg in OPTIONAL_SEARCH_ALGS:
        log.info("nothing to sample for %d grid point(s): they run as a plain grid, not through %s", len(joint),
                 tune_cfg.search_alg)
    if joint:
        sweeps.append(Sweep(JOINT_SWEEP, tuple(joint), sampled_keys, tune_cfg.num_samples, "random"))
    if unsampled:
        sweeps.append(Sweep(f"{JOINT_SWEEP}-unsampled", tuple(unsampled), {}, 1, "random"))
    return sweeps + per_point


def to_tune_domain(spec: Mapping[str, Any], key: str = "") -> Any:
    """``{loguniform: [a, b]}`` -> ``tune.loguniform(a, b)`` (and choice, grid, uniform, randint with high
    exclusive). ``model.features`` values become ``"a+b"`` strings, which every search algorithm can sample."""
    kind, values = next(iter(spec.items()))
    if key == FEATURES_KEY:
        values = ["+".join(features_value(v)) for v in values]
    if kind == "grid":
        return tune.grid_search(list(values))
    if kind == "choice":
        return tune.choice(list(values))
    return {"uniform": tune.uniform, "loguniform": tune.loguniform, "randint": tune.randint}[kind](*values)


def trial_params(config: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
    """A trial's model entry and its Tune config flattened back to dotted keys (grid point + sampled values)."""
    point = dict(config.get(GRID_KEY, {}))
    entry = int(point.pop(ENTRY_KEY, 0))
    return entry, {**point, **{k: v for k, v in config.items() if k != GRID_KEY}}


def require_search_alg(name: str) -> None:
    """Raise ConfigError, saying what to install, when ``name`` needs a package that is missing."""
    if name not in OPTIONAL_SEARCH_ALGS:
        return
    module, extra = OPTIONAL_SEARCH_ALGS[name]
    try:
        importlib.import_module(module)
    except ImportError as err:
        raise ConfigError(f"tune.search_alg {name} needs the {module} package, which is not installed: "
                          f"pip install 'rmm[{extra}]' (or use search_alg: random)") from err


def make_search_alg(sweep: Sweep, seed: int, max_concurrent: int) -> Any:
    """The searcher of one Tuner, running at most ``max_concurrent`` trials at once: Ray's random/grid variant
    generator, or Optuna/HyperOpt behind a ``ConcurrencyLimiter`` (``TuneConfig.max_concurrent_trials`` would
    be ignored for a variant generator passed in, so the limit is set here for both)."""
    if sweep.search_alg == "optuna":
        from ray.tune.search.optuna import OptunaSearch

        return ConcurrencyLimiter(OptunaSearch(seed=seed), max_concurrent=max_concurrent)
    if sweep.search_alg == "hyperopt":
        from ray.tune.search.hyperopt import HyperOptSearch

        return ConcurrencyLimiter(HyperOptSearch(random_state_seed=seed), max_concurrent=max_concurrent)
    return BasicVariantGenerator(max_concurrent=max_concurrent, random_state=seed)


def make_scheduler(cfg: Config) -> Any:
    """FIFO, or ASHA on the per-evaluation validation reports (one ``training_iteration`` each; a trial's
    last iteration is its final summary, so ``max_t`` is one past the most evaluations a trial can make)."""
    if cfg.tune.scheduler == "asha":
        return tune.schedulers.ASHAScheduler(
            time_attr="training_iteration",
            max_t=max(max_evaluations(cfg.train_for(m), cfg.search_for(m)) for m in tuned_models(cfg)) + 1,
            grace_period=cfg.tune.asha_grace_period, reduction_factor=cfg.tune.asha_reduction_factor)
    return tune.schedulers.FIFOScheduler()


def trial_resources(cfg: Config) -> dict[str, float]:
    """Resources of a trial's own process: CPU only; its GPUs go to its Ray Train workers (:func:`trial_train`)."""
    return {"cpu": cfg.tune.cpus_per_trial, "gpu": 0}


def trial_train(cfg: Config, train: TrainConfig) -> tuple[TrainConfig, float | None]:
    """A trial's train settings (``tune.num_workers`` workers, on GPUs when ``tune.gpus_per_trial`` > 0) and the
    GPU share of each of its workers (None: CPU, or ``train.scaling.use_gpu``'s whole GPU per worker)."""
    gpus = cfg.tune.gpus_per_trial
    # A trial reports to Tune through Ray Train's callbacks, so it always trains in Ray Train workers.
    scaling = dataclasses.replace(train.scaling, num_workers=cfg.tune.num_workers,
                                  use_gpu=train.scaling.use_gpu or gpus > 0, launcher="ray_train")
    train = dataclasses.replace(train, scaling=scaling)
    return train, (gpus / cfg.tune.num_workers if gpus > 0 else None)


def _trial(config: dict[str, Any], base: Config, models: tuple[ModelConfig, ...], fresh: bool) -> None:
    """One trial: train the model entry its grid point names with the trial's values applied (a run that
    already finished with the same inputs is reused), then report the run's name with its validation metrics."""
    from rmm.train.run import train_model

    entry, params = trial_params(config)
    cfg, trial_model = apply_params(base, models[entry], params)
    train_cfg, gpus_per_worker = trial_train(base, cfg.train)
    record = train_model(cfg, trial_model, train_cfg=train_cfg, callbacks=[TuneReportCallback()], fresh=fresh,
                         gpus_per_worker=gpus_per_worker or None)
    tune.report({**{f"valid/{k}": v for k, v in record.valid.items()}, "run_name": record.run_name})


def cell_name(entry: int, model: ModelConfig) -> str:
    """The name of a sweep's cell, e.g. ``tune-01-vbpr-image_stats+text_minilm-mean``: the model entry, its
    features and fusion."""
    return f"tune-{entry:02d}-{readable_name(model)}"


def tune_models(cfg: Config, fresh: bool = False) -> list[RunRecord]:
    """Run the sweep; return one run record per (model entry, features, fusion) cell: that of the cell's best
    trial by validation metric, whose test metrics come from that same run, marked ``stage: tune``, with the
    searched values (``search``) and the cell's trials. ``fresh``: start the sweep anew and retrain every trial
    even where a run with the same inputs finished before. ``train.seeds`` is refused (ConfigError): a sweep
    trains each point with one seed; train the chosen configurations with seeds afterwards (``rmm train``)."""
    from rmm.train.run import check_inputs

    require_search_alg(cfg.tune.search_alg)
    models = tuned_models(cfg)
    seeded = [model.label for model in models if cfg.train_for(model).seeds]
    if seeded:  # the config's check misses `rmm tune` on a config whose stages leave tune out
        raise ConfigError(f"rmm tune trains each point with one seed, but train.seeds is set for {seeded}: "
                          f"{SEEDS_WITHOUT_TUNE}")
    for model in models:  # wrong inputs fail here, in one line, not in every trial
        check_inputs(cfg, model, cfg.train_for(model))
    if fresh:
        cfg.storage.remove(TUNE_DIR)
    init_ray(cfg.ray)
    # Tune's TensorBoard logger renames every "valid/recall@20" ("@" is not a TensorBoard name), at INFO, per report.
    logging.getLogger("tensorboardX").setLevel(logging.WARNING)
    # Tune runs each trial in its own directory: a relative output.dir must not resolve there.
    if not cfg.storage.is_remote:
        cfg = cfg.replace(output=dataclasses.replace(cfg.output, dir=str(cfg.out_dir.resolve())))
    metric = f"valid/{cfg.train.eval.metric}"
    storage = cfg.storage.where(TUNE_DIR)
    outcomes: list[TrialOutcome] = []
    cell_models: dict[str, ModelConfig] = {}
    errors = []
    for sweep in plan_sweeps(cfg):
        grid = _fit(cfg, models, sweep, storage, metric, fresh)
        outcomes += _outcomes(cfg, models, grid, metric, cell_models)
        errors += [result.error for result in grid if result.error is not None]
    cfg.storage.pull(RUNS_DIR)  # the records the trials wrote on other nodes
    records = _cell_records(cfg, outcomes, cell_models, metric)
    if not records:
        user_error = next(filter(None, map(user_error_in, errors)), None)
        if user_error is not None:
            raise type(user_error)(f"no trial finished; the first trial error: {user_error}")
        raise RuntimeError(f"no trial finished; see {storage} for the trial errors")
    return records


def _fit(cfg: Config, models: tuple[ModelConfig, ...], sweep: Sweep, storage: str, metric: str,
         fresh: bool) -> Any:
    """Run (or restore) one sweep's Tuner; ``storage`` is Tune's ``storage_path``, a local path or a URI."""
    trainable = tune.with_resources(tune.with_parameters(_trial, base=cfg, models=models, fresh=fresh),
                                    trial_resources(cfg))
    path = join_location(storage, sweep.name)
    plan_file = join_location(storage, f"{sweep.name}.sweep.json")
    plan = _plan_fingerprint(cfg, models, sweep)
    if tune.Tuner.can_restore(path):
        _check_same_plan(plan_file, plan, path)
        log.info("resuming sweep %s", path)
        tuner = tune.Tuner.restore(path, trainable=trainable, resume_errored=True)
    else:
        write_text(plan_file, json.dumps(plan, indent=2))
        tuner = tune.Tuner(
            trainable,
            param_space=sweep.param_space(),
            tune_config=tune.TuneConfig(metric=metric, mode="max", num_samples=sweep.num_samples,
                                        search_alg=make_search_alg(sweep, cfg.train.seed,
                                                                   cfg.tune.max_concurrent_trials),
                                        scheduler=make_scheduler(cfg)),
            # Tune's status table only with -v: otherwise the console's tune bar counts the trials.
            run_config=tune.RunConfig(name=sweep.name, storage_path=storage, callbacks=[TrialProgress()],
                                      verbose=0 if console.current().quiet else 1),
        )
    return tuner.fit()


class TrialProgress(tune.Callback):
    """Each ended trial advances the console's tune bar (Tune's callbacks run in the driver)."""

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        console.current().event({"kind": "trial"})

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        console.current().event({"kind": "trial"})


def _plan_fingerprint(cfg: Config, models: Sequence[ModelConfig], sweep: Sweep) -> dict[str, Any]:
    """What decides a sweep's trials; a restored sweep must have been started with the same."""
    settings = ("scheduler", "num_workers", "asha_grace_period", "asha_reduction_factor")
    train = {k: v for k, v in dataclasses.asdict(cfg.train).items() if k not in RUNTIME_TRAIN_FIELDS}
    return json.loads(json.dumps({
        "models": [model_to_dict(m) for m in models], "points": sweep.points, "sampled": sweep.sampled,
        "num_samples": sweep.num_samples, "search_alg": sweep.search_alg, "train": train,
        "tune": {k: getattr(cfg.tune, k) for k in settings}, "dataset": dataclasses.asdict(cfg.dataset),
        "dataset_files": dataset_fingerprint(cfg.dataset_dir)}))


def _check_same_plan(plan_file: str, plan: Mapping[str, Any], path: str) -> None:
    text = read_text(plan_file)
    if text is None:
        log.warning("sweep %s has no %s; resuming without checking that its search space is unchanged",
                    path, plan_file)
        return
    saved = json.loads(text)
    changed = sorted(k for k in set(saved) | set(plan) if saved.get(k) != plan.get(k))
    if changed:
        raise ConfigError(f"the sweep in {path} was started with other {', '.join(changed)} than the config now "
                          f"gives; resuming would mix them. Rerun with --fresh to start it anew (finished runs "
                          f"stay under runs/), or set output.dir elsewhere")


def _outcomes(cfg: Config, models: tuple[ModelConfig, ...], grid: Any, metric: str,
              cell_models: dict[str, ModelConfig]) -> list[TrialOutcome]:
    """The trials of one Tuner as :class:`TrialOutcome`; ``cell_models`` collects each cell's model."""
    outcomes = []
    for result in grid:
        entry, params = trial_params(result.config)
        params = effective_params(models[entry], params)  # a joint sweep samples keys other models lack
        trial_model = apply_params(cfg, models[entry], params)[1]
        cell = cell_name(entry, trial_model)
        cell_models.setdefault(cell, trial_model)
        metrics = result.metrics or {}
        status = ERROR if result.error is not None else FINISHED if "run_name" in metrics else STOPPED
        name = metrics.get("run_name") or f"{cell}-{metrics.get('trial_id', Path(result.path).name)}"
        outcomes.append(TrialOutcome(run_name=name, cell=cell, params=params, status=status,
                                     value=metrics.get(metric), iterations=int(metrics.get("training_iteration", 0))))
        if status == ERROR:
            log.warning("trial %s failed: %s", name, result.error)
    return outcomes


def _cell_records(cfg: Config, outcomes: Sequence[TrialOutcome], cell_models: Mapping[str, ModelConfig],
                  metric: str) -> list[RunRecord]:
    records = []
    for cell in best_per_cell(outcomes):
        if cell.best is None:
            log.warning("no trial of %s finished (%s); it gets no record: raise tune.num_samples or use "
                        "scheduler fifo", cell.key, ", ".join(f"{t.run_name}: {t.status}" for t in cell.trials))
            continue
        records.append(dataclasses.replace(
            load_run_record(cfg.out_dir, cell.best.run_name), stage="tune", cell=cell.key,
            search=dict(cell.best.params),
            trials=tuple({"run_name": t.run_name, metric: t.value, "params": dict(t.params)} for t in cell.finished),
            unfinished_trials=tuple({"run_name": t.run_name, "status": t.status, metric: t.value,
                                     "evaluations": t.iterations, "params": dict(t.params)}
                                    for t in cell.trials if t.status != FINISHED)))
    return records
