"""``train.seeds``: ``rmm train`` trains every model once per seed, one run and record each, grouped by
``seed_group``; a seed's run is the same run alone or in a list; ``rmm tune`` refuses seeds."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from rmm.config import (
    Config,
    ConfigError,
    EvalConfig,
    FaultToleranceConfig,
    ModelConfig,
    OutputConfig,
    ScalingConfig,
    TrainConfig,
    config_from_dict,
)
from rmm.runs import RUN_FILE, load_results, run_dir
from rmm.stages import run_train
from tests.train.planted import write_planted_dataset

SWEEP = {"search": {"train.learning_rate": {"choice": [0.01, 0.02]}}}


@pytest.mark.parametrize("raw", [
    {"stages": ["train", "tune"], "train": {"seeds": [1, 2]}, "tune": SWEEP},
    {"train": {"seeds": [1, 2]}},  # the default stages include tune
    {"stages": ["train"], "train": {"seeds": [1, 2]}, "tune": SWEEP},  # `rmm tune CONFIG` would sweep it
    {"stages": ["train", "tune"], "model": [{"name": "bprmf", "train": {"seeds": [3, 4]}}], "tune": SWEEP},
    {"stages": ["tune"], "tune": {"search": {"train.seeds": {"grid": [[1, 2], [3]]}}}},
], ids=["sweep", "default-stages", "search-without-tune-stage", "model-override", "searched"])
def test_seeds_with_a_sweep_are_refused_when_the_config_loads(raw: dict) -> None:
    with pytest.raises(ConfigError, match=r"^train\.seeds .* sweep with one seed \(no train\.seeds\), then train the "
                                          r"chosen configurations with train\.seeds"):
        config_from_dict({"model": [{"name": "bprmf"}], **raw})


@pytest.mark.parametrize("seeds", [[1, 2, 1], [3, -1]])
def test_seeds_must_be_distinct_and_not_negative(seeds: list[int]) -> None:
    with pytest.raises(ConfigError, match=r"seeds must be distinct integers >= 0"):
        config_from_dict({"stages": ["train"], "model": [{"name": "bprmf"}], "train": {"seeds": seeds}})


def test_seeds_without_a_sweep_load_and_rmm_tune_refuses_them_before_ray(tmp_path: Path) -> None:
    from rmm.tune.search import tune_models

    cfg = config_from_dict({"stages": ["data", "train", "report"], "model": [{"name": "bprmf"}],
                            "train": {"seeds": [1, 2, 3]}, "output": {"dir": str(tmp_path)}})
    assert cfg.train.seeds == (1, 2, 3)
    with pytest.raises(ConfigError, match=r"rmm tune trains each point with one seed, but train\.seeds is set for "
                                          r"\['bprmf'\]"):
        tune_models(cfg)  # `rmm tune CONFIG` runs the tune stage whatever the stages say


@pytest.mark.ray
def test_train_with_two_seeds_records_one_group_and_a_rerun_trains_nothing(ray_cluster, tmp_path: Path) -> None:
    from rmm.report.tables import write_report

    cfg = Config(stages=("train",), output=OutputConfig(dir=str(tmp_path)), model=(ModelConfig("bprmf"),),
                 train=TrainConfig(epochs=2, batch_size=64, learning_rate=0.01, seeds=(1, 2),
                                   eval=EvalConfig(topk=(5, 10), metric="recall@10"),
                                   scaling=ScalingConfig(num_workers=1, cpus_per_worker=0.5),
                                   fault_tolerance=FaultToleranceConfig(checkpoint_every=1)))
    write_planted_dataset(cfg.dataset_dir)

    records = run_train(cfg)

    recorded = load_results(tmp_path)
    assert [(r.run_name, r.seed, r.seed_group) for r in recorded] == [
        (r.run_name, r.seed, r.seed_group) for r in records]
    assert [r.seed for r in recorded] == [1, 2] and recorded[0].run_name != recorded[1].run_name
    assert recorded[0].seed_group == recorded[1].seed_group and recorded[0].seed_group.startswith("bprmf-")
    assert all(r.config["train"]["seed"] == r.seed and r.config["train"]["seeds"] == [] for r in recorded)
    assert recorded[0].history[0]["loss"] != recorded[1].history[0]["loss"]  # really other seeds
    written = {r.run_name: (run_dir(tmp_path, r.run_name) / RUN_FILE).stat().st_mtime_ns for r in recorded}

    again = run_train(cfg)  # both runs finished: reused, not trained
    alone = run_train(cfg.replace(train=dataclasses.replace(cfg.train, seed=2, seeds=())))  # seed 2 on its own

    assert [r.run_name for r in again] == list(written) and alone[0].run_name == recorded[1].run_name
    assert [r.train_seconds for r in again + alone] == [r.train_seconds for r in recorded + recorded[1:]]
    assert {name: (run_dir(tmp_path, name) / RUN_FILE).stat().st_mtime_ns for name in written} == written
    assert [(r.run_name, r.seed_group) for r in load_results(tmp_path)] == [
        (r.run_name, r.seed_group) for r in recorded]
    report = write_report(tmp_path).read_text()
    row = next(line for line in report.splitlines() if line.startswith("| bprmf |"))
    assert row.count(" ± ") == 2 and "(baseline)" in row
    assert f"seed group `{recorded[0].seed_group}`, 2 seeds" in report
