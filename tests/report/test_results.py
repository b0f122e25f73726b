"""Run records (:mod:`rmm.runs`) and ``results.json``: typed, checked and strict JSON on write and on read, and
the one rule that chooses among runs (validation metric, earlier run on a tie)."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from rmm.errors import DataError
from rmm.report.results import best_by_validation, selection_key, validation_metric
from rmm.runs import first_best, load_results, load_run_record, record_runs, results_path, run_dir, write_run_record
from tests.report.helpers import record


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf"), np.float32("nan")])
def test_non_finite_metric_is_refused_naming_run_and_key(tmp_path: Path, bad: float) -> None:
    good = record("train-00-lightgcn", "lightgcn", valid=0.2, test=0.1)
    record_runs(tmp_path, [good])
    before = results_path(tmp_path).read_text()
    broken = record("train-01-vbpr", "vbpr", ["image"], valid=0.3, test=0.2)
    broken = dataclasses.replace(broken, test={**broken.test, "recall@20": bad})
    with pytest.raises(ValueError, match=r"^run train-01-vbpr: test/recall@20 is (nan|inf|-inf); "):
        record_runs(tmp_path, [broken])
    assert results_path(tmp_path).read_text() == before  # nothing written


def test_non_finite_number_nested_in_history_is_refused(tmp_path: Path) -> None:
    history = [{"epoch": 2, "loss": 0.5}, {"epoch": 4, "loss": math.nan}]
    broken = record("train-00-lightgcn", "lightgcn", history=history)
    with pytest.raises(ValueError, match=r"run train-00-lightgcn: history/1/loss is nan"):
        record_runs(tmp_path, [broken])
    assert not results_path(tmp_path).exists()


def test_written_file_is_strict_json_and_round_trips(tmp_path: Path) -> None:
    runs = [record("train-00-lightgcn", "lightgcn", valid=0.2, test=0.1, best_epoch=4),
            record("train-01-vbpr", "vbpr", ["image"], valid=0.3, test=np.float64(0.25))]
    record_runs(tmp_path, runs)

    def refuse(constant: str) -> float:
        raise AssertionError(f"non-JSON constant {constant} written")

    strict = json.loads(results_path(tmp_path).read_text(), parse_constant=refuse)
    assert [r["run_name"] for r in strict["runs"]] == ["train-00-lightgcn", "train-01-vbpr"]
    assert load_results(tmp_path) == runs


def test_a_record_round_trips_through_its_run_directory(tmp_path: Path) -> None:
    run = record("train-00-vbpr", "vbpr", ["image"], valid=0.2, test=0.1, best_epoch=3, seed=7,
                 history=[{"epoch": 3, "loss": 0.5}], trials=[{"run_name": "t", "params": {"train.seed": 1}}])
    write_run_record(run_dir(tmp_path, run.run_name), run)
    assert load_run_record(tmp_path, run.run_name) == run


def test_a_record_of_an_older_run_loads_with_the_fields_it_lacks_defaulted(tmp_path: Path) -> None:
    old = {"run_name": "bprmf-1", "model": "bprmf", "features": [], "valid": {"recall@20": 0.1},
           "test": {"recall@20": 0.2}, "config": {"train": {"metric": "recall@10"}}}
    results_path(tmp_path).write_text(json.dumps({"runs": [old]}))
    [run] = load_results(tmp_path)
    assert (run.label, run.test_cold_id_only, run.stage, run.history, run.inputs) == ("bprmf", True, "train", (), {})
    assert run.train_metric == "recall@10"  # the train section before it had an eval part


@pytest.mark.parametrize(("change", "message"), [
    ({"test": None}, r"field 'test' of run 'a' must be metrics"),
    ({"valid": {"recall@20": "high"}}, r"field 'valid' of run 'a' must be metrics"),
    ({"best_epoch": 2.5}, r"field 'best_epoch' of run 'a' must be integer"),
    ({"features": "image"}, r"field 'features' of run 'a' must be list"),
    ({"colour": "red"}, r"unknown field\(s\) \['colour'\]"),
    ({"best_trial": "t1"}, r"run 'a' is a sweep record from before runs had identities"),
    ({"model": None}, r"field 'model' of run 'a' must be string"),
])
def test_a_malformed_record_is_a_one_line_error_naming_file_and_field(tmp_path: Path, change: dict,
                                                                     message: str) -> None:
    data = {**record("a", "vbpr").to_dict(), **change}
    results_path(tmp_path).write_text(json.dumps({"runs": [record("b", "vbpr").to_dict(), data]}))
    with pytest.raises(DataError, match=rf"^{results_path(tmp_path)}, run 1: {message}") as err:
        load_results(tmp_path)
    assert "\n" not in str(err.value)


def test_a_record_lacking_a_required_field_or_not_an_object_is_refused(tmp_path: Path) -> None:
    data = record("a", "vbpr").to_dict()
    del data["valid"]
    results_path(tmp_path).write_text(json.dumps({"runs": [data, 3]}))
    with pytest.raises(DataError, match=r"run 0: run record lacks \['valid'\]"):
        load_results(tmp_path)
    results_path(tmp_path).write_text(json.dumps({"runs": [3]}))
    with pytest.raises(DataError, match="run 0: a run record must be a JSON object, got int"):
        load_results(tmp_path)
    results_path(tmp_path).write_text(json.dumps([]))
    with pytest.raises(DataError, match=r"is not a results file"):
        load_results(tmp_path)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_loading_a_file_with_nan_is_a_one_line_error_naming_it(tmp_path: Path, constant: str) -> None:
    text = json.dumps({"runs": [record("train-00-lightgcn", "lightgcn", valid=0.2, test=0.1).to_dict()]})
    results_path(tmp_path).write_text(text.replace('"recall@20": 0.1', f'"recall@20": {constant}'))
    with pytest.raises(ValueError) as err:
        load_results(tmp_path)
    message = str(err.value)
    assert str(results_path(tmp_path)) in message and constant in message and "\n" not in message
    # Recording on top of such a file fails the same way instead of silently rewriting it.
    with pytest.raises(ValueError, match=constant):
        record_runs(tmp_path, [record("train-01-bprmf", "bprmf")])


def test_best_by_validation_ignores_test_and_keeps_the_earlier_run_on_a_tie() -> None:
    runs = [record("a", "vbpr", valid=0.2, test=0.9), record("b", "vbpr", valid=0.4, test=0.1),
            record("c", "vbpr", valid=0.4, test=0.5)]
    assert best_by_validation(runs, "recall@20").run_name == "b"
    assert best_by_validation(runs[::-1], "recall@20").run_name == "c"
    assert best_by_validation([], "recall@20") is None


def test_a_run_without_the_metric_is_chosen_last() -> None:
    unvalidated = dataclasses.replace(record("a", "vbpr", valid=0.9, test=0.9), valid={})
    nan = record("b", "vbpr", valid=math.nan, test=0.9)
    low = record("c", "vbpr", valid=0.01, test=0.0)
    assert selection_key(unvalidated, "recall@20") == selection_key(nan, "recall@20") == -math.inf
    assert best_by_validation([unvalidated, nan, low], "recall@20").run_name == "c"
    assert best_by_validation([unvalidated, nan], "recall@20").run_name == "a"  # none validated it: the first


def test_validation_metric_falls_back_to_the_early_stopping_metric() -> None:
    at_20 = record("a", "vbpr", valid=0.1)
    at_10 = record("b", "vbpr", valid=0.2, k=10)
    assert validation_metric([at_20, dataclasses.replace(at_10, valid={**at_10.valid, "recall@20": 0.3})],
                             "recall@20") == "recall@20"  # every run validated it
    at_10_too = record("c", "vbpr", valid=0.5, k=10)
    assert validation_metric([at_10, at_10_too], "recall@20") == "recall@10"
    assert validation_metric([at_20, at_10], "recall@20") == "recall@20"  # no common one: headline, a's last
    assert validation_metric([], "recall@20") == "recall@20"


def test_first_best_modes_ties_and_nan() -> None:
    values = [("a", 0.3), ("b", math.nan), ("c", 0.5), ("d", 0.5), ("e", None), ("f", 0.1)]
    assert first_best(values, lambda v: v[1])[0] == "c"
    assert first_best(values, lambda v: v[1], mode="min")[0] == "f"
    assert first_best([("b", math.nan)], lambda v: v[1]) is None
    with pytest.raises(ValueError, match="mode"):
        first_best(values, lambda v: v[1], mode="best")
