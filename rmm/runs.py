"""Run records: what one training run (or a sweep cell's best trial) computed, where its files are, and the
``<out>/results.json`` that lists them.

One typed :class:`RunRecord` passes between train (which writes it), tune (which marks a cell's best trial),
report (which chooses among records and renders them) and recommend (which loads a record's model). It is stored
twice, as plain JSON: in the run's own directory (``<out>/runs/<run_name>/run.json``) and in ``results.json``,
where runs are keyed by ``run_name`` so rerunning a stage replaces its records instead of piling up duplicates.
Both files are strict JSON: a non-finite number (NaN, Infinity) is refused on write and on read.

No torch, no Ray: the report and the command line read records in a plain process.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from numbers import Real
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rmm.errors import DataError, NotFoundError

if TYPE_CHECKING:
    from rmm.config import ModelConfig

RESULTS_FILE = "results.json"
RUNS_DIR = "runs"
#: The files of a run directory ``<out>/runs/<run_name>/``.
RUN_FILE = "run.json"
PER_USER_FILE = "per_user_test.parquet"
#: Per-user test metrics on the cold items only, beside ``per_user_test.parquet`` when the dataset has any.
PER_USER_COLD_FILE = "per_user_test_cold.parquet"
MODEL_FILE = "model.pt"
#: Hex digits of the identity in a run's name.
NAME_HASH_CHARS = 10

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class RunRecord:
    """One run as ``results.json`` and ``run.json`` hold it.

    Attributes:
        run_name: ``<label>-<identity prefix>`` (:func:`run_name`); names the run directory.
        model: registry name of the model.
        valid: ``<metric>@K`` -> mean over users on the validation split, at the best epoch.
        test: the same on the test split, at the best epoch.
        label: the model entry's label (name, features, fusion).
        features: input feature names (empty for an ID-only model).
        fusion: the fusion of several features; None unless several were fused.
        config: the run's ``model`` and ``train`` sections as plain dicts.
        dataset: the dataset's name.
        best_epoch: the epoch whose metrics are recorded.
        test_cold: test metrics on the cold items only (empty without any).
        test_cold_id_only: the model is ID-only, so its cold numbers score untrained embeddings (shown as n/a).
        train_seconds: wall time of training.
        history: one dict per evaluation: ``epoch``, ``loss``, ``valid/<metric>@K``.
        resumed_after_epoch: the checkpoint epoch the final attempt resumed from; None if it trained from scratch.
        run_dir: the run directory when it was written.
        seed: the train seed.
        identity: sha256 of the run's inputs (:mod:`rmm.train.identity`); None for records written before it.
        inputs: what the identity hashes (model, train, dataset and feature fingerprints, rmm version); empty
            for records written before it.
        library_versions: versions of the libraries that trained it.
        stage: ``train`` or ``tune``.
        seed_group: shared by the runs whose inputs differ in the seed alone.
        ray_path: Ray Train's result directory (``run.json`` only).
        cell: a sweep cell's name (``stage: tune``).
        search: the searched values of the cell's best trial (dotted key -> value).
        trials: the cell's finished trials: run name, validation metric, params.
        unfinished_trials: the cell's stopped or failed trials.
        seeds: a seed group's seeds, in order (set on the group's record only, see
            :func:`rmm.report.results.by_seed_group`).
        seed_runs: a seed group's run names, in order of seed.
        valid_std: a seed group's sample standard deviation of each validation metric.
        test_std: the same for test metrics.
        test_cold_std: the same for cold-item test metrics.
    """

    run_name: str
    model: str
    valid: Mapping[str, float]
    test: Mapping[str, float]
    label: str = ""
    features: tuple[str, ...] = ()
    fusion: str | None = None
    config: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    dataset: str = ""
    best_epoch: int | None = None
    test_cold: Mapping[str, float] = dataclasses.field(default_factory=dict)
    test_cold_id_only: bool = False
    train_seconds: float = 0.0
    history: tuple[Mapping[str, float], ...] = ()
    resumed_after_epoch: int | None = None
    run_dir: str | None = None
    seed: int | None = None
    identity: str | None = None
    inputs: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    library_versions: Mapping[str, str] = dataclasses.field(default_factory=dict)
    stage: str = "train"
    seed_group: str | None = None
    ray_path: str | None = None
    cell: str | None = None
    search: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    trials: tuple[Mapping[str, Any], ...] = ()
    unfinished_trials: tuple[Mapping[str, Any], ...] = ()
    seeds: tuple[int | None, ...] = ()
    seed_runs: tuple[str, ...] = ()
    valid_std: Mapping[str, float] = dataclasses.field(default_factory=dict)
    test_std: Mapping[str, float] = dataclasses.field(default_factory=dict)
    test_cold_std: Mapping[str, float] = dataclasses.field(default_factory=dict)

    @property
    def train_metric(self) -> str | None:
        """The metric the run early-stopped on (``config.train.eval.metric``; ``config.train.metric`` in records
        written before the train section had an ``eval`` part), None where the config lacks it."""
        train = self.config.get("train") or {}
        metric = (train.get("eval") or {}).get("metric") or train.get("metric")
        return str(metric) if metric else None

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples as lists), as stored."""
        return json.loads(json.dumps(dataclasses.asdict(self), allow_nan=False))

    @classmethod
    def from_dict(cls, data: Any, where: str) -> RunRecord:
        """A record read from a file, checked field by field.

        Args:
            data: the decoded JSON object.
            where: the file and position, for the message (``<out>/results.json, run 3``).

        Raises:
            DataError: not an object, a required field missing, an unknown field or a field of the wrong type;
                the message names ``where`` and the field.
        """
        if not isinstance(data, Mapping):
            raise DataError(f"{where}: a run record must be a JSON object, got {type(data).__name__}")
        if "best_trial" in data:
            raise DataError(f"{where}: run {data.get('run_name', '?')!r} is a sweep record from before runs had "
                            f"identities (field 'best_trial'); run `rmm tune CONFIG` again to record it anew")
        unknown = sorted(set(data) - _FIELDS.keys())
        if unknown:
            raise DataError(f"{where}: unknown field(s) {unknown} in a run record; known: {sorted(_FIELDS)}")
        missing = [name for name in _REQUIRED if name not in data]
        if missing:
            raise DataError(f"{where}: run record lacks {missing} (run {data.get('run_name', '?')!r}); train it "
                            f"again to rewrite it")
        values: dict[str, Any] = {}
        for name, value in data.items():
            if value is None and name in _DEFAULTED:
                continue  # an older writer's null for a field that has an empty default now
            if not (value is None and name in _NULLABLE) and not _CHECKS[_FIELDS[name]](value):
                raise DataError(f"{where}: field {name!r} of run {data.get('run_name', '?')!r} must be "
                                f"{_FIELDS[name]}, got {value!r:.80}")
            values[name] = tuple(value) if isinstance(value, list) else value
        values.setdefault("label", data["model"])
        values.setdefault("test_cold_id_only", not data.get("features"))
        return cls(**values)


def _is_metrics(value: Any) -> bool:
    return isinstance(value, Mapping) and all(isinstance(v, Real) and not isinstance(v, bool) for v in value.values())


def _json_kind(annotation: str) -> str:
    """The kind of JSON value a field of that annotation holds (``tuple[...]`` -> list), what :func:`_CHECKS`
    tests a read value against."""
    base = annotation.removesuffix(" | None")
    if base.startswith("tuple["):
        return "list"
    kinds = {"Mapping[str, float]": "metrics", "Mapping[str, Any]": "object", "Mapping[str, str]": "object",
             "int": "integer", "float": "number", "bool": "boolean", "str": "string"}
    return kinds[base]


#: Field -> the kind of JSON value it holds.
_FIELDS: dict[str, str] = {field.name: _json_kind(str(field.type)) for field in dataclasses.fields(RunRecord)}
_CHECKS: dict[str, Callable[[Any], bool]] = {
    "metrics": _is_metrics,
    "list": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, Mapping),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, Real) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "string": lambda v: isinstance(v, str),
}
_REQUIRED = ("run_name", "model", "valid", "test")
#: Optional fields whose absence is None, and those whose absence is an empty or false value.
_NULLABLE = frozenset(f.name for f in dataclasses.fields(RunRecord) if f.default is None)
_DEFAULTED = frozenset(f.name for f in dataclasses.fields(RunRecord)
                       if f.name not in _NULLABLE and f.name not in _REQUIRED)


def readable_name(model: ModelConfig) -> str:
    """Filesystem-safe form of the model's label, e.g. ``vbpr-image_stats+text_minilm-concat``."""
    readable = model.label.replace("[", "-").replace("|", "-").rstrip("]")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", readable)


def run_name(model: ModelConfig, identity: str) -> str:
    """A run's name: the readable label plus a short hash of its identity (:mod:`rmm.train.identity`), e.g.
    ``lightgcn-3f9a0c2b1d``. It names ``<out>/runs/<name>/``, Ray's ``<out>/ray_results/<name>/`` and the run's
    record in results.json."""
    return f"{readable_name(model)}-{identity[:NAME_HASH_CHARS]}"


def results_path(out_dir: str | Path) -> Path:
    return Path(out_dir) / RESULTS_FILE


def run_dir(out_dir: str | Path, run_name: str) -> Path:
    """Where one training run keeps its record, per-user metrics and checkpoint: ``<out>/runs/<run_name>/``."""
    return Path(out_dir) / RUNS_DIR / run_name


def _read_json(path: Path) -> Any:
    def refuse(constant: str) -> float:
        raise DataError(f"{path} holds {constant}, which is not JSON (run records are strict JSON); replace it "
                        f"with null or train that run again")

    try:
        return json.loads(path.read_text(), parse_constant=refuse)
    except json.JSONDecodeError as err:
        raise DataError(f"{path} is not JSON ({err})") from err


def load_results(out_dir: str | Path) -> list[RunRecord]:
    """The runs recorded in ``out_dir`` (empty when nothing was trained yet).

    Raises:
        DataError: the file is not ``{"runs": [...]}`` of valid records (the message names the field).
    """
    path = results_path(out_dir)
    if not path.exists():
        return []
    data = _read_json(path)
    if not isinstance(data, Mapping) or not isinstance(data.get("runs"), list):
        raise DataError(f"{path} is not a results file; expected {{\"runs\": [...]}}")
    return [RunRecord.from_dict(run, f"{path}, run {index}") for index, run in enumerate(data["runs"])]


def record_runs(out_dir: str | Path, records: Iterable[RunRecord]) -> Path:
    """Add run records, replacing earlier ones with the same ``run_name``; written atomically.

    Raises:
        ValueError: a record holds a non-finite number (nothing is written then).
    """
    runs = {run.run_name: run for run in load_results(out_dir)}
    for record in records:
        runs[record.run_name] = record
    path = results_path(out_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"runs": [_strict(run) for run in runs.values()]}, indent=2, allow_nan=False))
    tmp.replace(path)
    return path


def write_run_record(directory: Path, record: RunRecord) -> Path:
    """Write ``record`` as ``<directory>/run.json``.

    Raises:
        ValueError: the record holds a non-finite number.
    """
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / RUN_FILE
    path.write_text(json.dumps(_strict(record), indent=2, allow_nan=False))
    return path


def load_run_record(out_dir: str | Path, run_name: str) -> RunRecord:
    """The ``run.json`` a training run wrote (its full record, as returned by ``train_model``)."""
    path = run_dir(out_dir, run_name) / RUN_FILE
    if not path.exists():
        raise NotFoundError(f"no run record {path}: run {run_name!r} did not finish")
    return RunRecord.from_dict(_read_json(path), str(path))


def _strict(record: RunRecord) -> dict[str, Any]:
    """``record.to_dict()``, refusing a non-finite number with the field that holds it."""
    data = dataclasses.asdict(record)
    for key, value in _numbers(data):
        if not math.isfinite(value):
            raise ValueError(f"run {record.run_name}: {key} is {value}; run records are strict JSON without NaN or "
                             f"Infinity (a diverged model gives NaN metrics and losses: lower train.learning_rate and "
                             f"train it again)")
    return record.to_dict()


def _numbers(value: Any, key: str = "") -> Iterator[tuple[str, float]]:
    """``(key, number)`` for every number nested in ``value``; keys join the path with ``/``
    (``test/recall@20``, ``history/3/loss``)."""
    if isinstance(value, Mapping):
        for name, item in value.items():
            yield from _numbers(item, f"{key}/{name}" if key else str(name))
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            yield from _numbers(item, f"{key}/{index}" if key else str(index))
    elif isinstance(value, bool):
        return  # a flag, not a metric
    elif isinstance(value, Real):
        yield key, float(value)


def first_best(items: Iterable[T], key: Callable[[T], float | None], mode: str = "max") -> T | None:
    """The item with the highest (``mode`` max) or lowest (min) ``key``; the earliest wins a tie, an item whose
    key is None or NaN is never chosen; None when nothing qualifies. The one rule every choice among runs
    follows: the report's cells and baseline, ``rmm recommend``'s default run, a sweep cell's best trial."""
    if mode not in ("max", "min"):
        raise ValueError(f"mode must be max or min, got {mode!r}")
    best, best_value = None, 0.0
    for item in items:
        value = key(item)
        if value is None or math.isnan(value):
            continue
        if best is None or (value > best_value if mode == "max" else value < best_value):
            best, best_value = item, value
    return best
