"""The search block without Ray: validation, grid points per model (what applies, deduplication), trial
configs, sweep plans."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

from rmm.config import (
    Config,
    ConfigError,
    EvalConfig,
    ModelConfig,
    TrainConfig,
    TuneConfig,
    build_model_config,
    config_from_dict,
)
from rmm.config.search import apply_params, effective_params, features_value, max_evaluations, model_space
from rmm.tune.search import (
    ENTRY_KEY,
    GRID_KEY,
    JOINT_SWEEP,
    plan_sweeps,
    require_search_alg,
    to_tune_domain,
    trial_params,
    trial_train,
)
from tests.train.planted import write_planted_dataset
from tests.tune.helpers import sweep_config

REPRESENTATIONS = {
    "model.features": {"grid": ["img+txt", ["lvlm_mean"], "lvlm_desc"]},
    "model.fusion": {"grid": ["concat", "mean", "attention"]},
}


def model(entry: dict) -> ModelConfig:
    return build_model_config(entry, "model")


def test_features_and_fusion_expand_to_distinct_cells_per_model() -> None:
    vbpr = model({"name": "vbpr", "features": ["img", "txt"]})
    points = model_space(REPRESENTATIONS, vbpr).points
    assert points == (
        {"model.features": ["img", "txt"], "model.fusion": "concat"},
        {"model.features": ["img", "txt"], "model.fusion": "mean"},
        {"model.features": ["img", "txt"], "model.fusion": "attention"},
        {"model.features": ["lvlm_mean"]},  # one feature: nothing to fuse, one trial not three
        {"model.features": ["lvlm_desc"]},
    )
    # One branch per modality: fusion never applies, so each feature set is one point.
    freedom = model({"name": "freedom", "features": ["img", "txt"]})
    assert model_space(REPRESENTATIONS, freedom).points == (
        {"model.features": ["img", "txt"]}, {"model.features": ["lvlm_mean"]}, {"model.features": ["lvlm_desc"]})
    # ID-only: neither key applies; one point.
    assert model_space(REPRESENTATIONS, model({"name": "lightgcn"})).points == ({},)


def test_keys_apply_only_to_models_that_have_them() -> None:
    search = {"model.knn_k": {"choice": [5, 10]}, "train.learning_rate": {"loguniform": [1e-3, 1e-1]},
              "model.embedding_dim": {"grid": [8, 16]}}
    lattice = model({"name": "lattice", "features": ["img"]})
    vbpr = model({"name": "vbpr", "features": ["img"]})
    assert set(model_space(search, lattice).sampled) == {"model.knn_k", "train.learning_rate"}
    assert set(model_space(search, vbpr).sampled) == {"train.learning_rate"}
    assert effective_params(vbpr, {"model.knn_k": 5, "train.learning_rate": 0.01}) == {"train.learning_rate": 0.01}
    assert [p["model.embedding_dim"] for p in model_space(search, vbpr).points] == [8, 16]


def test_apply_params_builds_the_trial_model_and_train_settings() -> None:
    base = Config(model=(model({"name": "vbpr", "features": ["img", "txt"], "fusion": "concat"}),))
    cfg, trial = apply_params(base, base.model[0], {"model.features": "img+txt", "model.fusion": "attention",
                                                    "model.embedding_dim": 16, "train.learning_rate": 0.05})
    assert trial.features == ("img", "txt") and trial.fusion == "attention" and trial.params.embedding_dim == 16
    assert trial.label == "vbpr[img+txt|attention]"
    assert cfg.train.learning_rate == 0.05 and cfg.model == (trial,)
    # A fusion sampled for a single feature is dropped, not an error.
    assert apply_params(base, base.model[0], {"model.features": ["img"], "model.fusion": "mean"})[1].label == \
        "vbpr[img]"
    # A key of a train sub-section is searched by its dotted path and changes that key alone.
    patient, _ = apply_params(base, base.model[0], {"train.eval.patience": 3})
    assert patient.train.eval == dataclasses.replace(base.train.eval, patience=3)


def test_search_space_errors_name_the_key_and_the_fix() -> None:
    vbpr = (model({"name": "vbpr", "features": ["img", "txt"]}),)
    from rmm.config.search import check_search_space

    with pytest.raises(ConfigError, match=r"tune.search.model.fusion: vbpr fusions are .*got \['sume'\]"):
        check_search_space({"model.fusion": {"grid": ["concat", "sume"]}}, vbpr)
    with pytest.raises(ConfigError, match=r"tune.search.model.fusion: vbpr fusions are .*got \['sume'\]"):
        check_search_space({"model.fusion": {"choice": ["sume"]}}, (model({"name": "vbpr", "features": ["img"]}),))
    with pytest.raises(ConfigError, match="tune.search grid point .* vbpr.*embedding_dim must be"):
        check_search_space({"model.embedding_dim": {"grid": [16, 0]}}, vbpr)
    with pytest.raises(ConfigError, match="loguniform needs low < high and low > 0"):
        check_search_space({"train.learning_rate": {"loguniform": [0, 1]}}, vbpr)
    with pytest.raises(ConfigError, match="randint needs integers"):
        check_search_space({"model.embedding_dim": {"randint": [8.5, 32]}}, vbpr)
    with pytest.raises(ConfigError, match="unknown model key 'embedding_dimm'"):
        check_search_space({"model.embedding_dimm": {"choice": [8]}}, vbpr)
    with pytest.raises(ConfigError, match="tune.search.train.patience: train.patience moved to train.eval.patience"):
        check_search_space({"train.patience": {"grid": [3]}}, vbpr)
    with pytest.raises(ConfigError, match="valid train keys: .*eval.every, eval.metric"):
        check_search_space({"train.eval.patient": {"grid": [3]}}, vbpr)
    # An ID-only model given features by the search is fine: they do not apply to it.
    check_search_space({"model.features": {"grid": [["img"]]}}, (model({"name": "lightgcn"}),))


def test_tune_config_checks() -> None:
    with pytest.raises(ValueError, match="search_alg must be"):
        TuneConfig(search_alg="bayes")
    with pytest.raises(ValueError, match="grid searches grids only"):
        TuneConfig(search_alg="grid", search={"train.learning_rate": {"uniform": [0.1, 0.2]}})
    with pytest.raises(ValueError, match="max_concurrent_trials must be >= 1"):
        TuneConfig(max_concurrent_trials=0)
    with pytest.raises(ValueError, match="asha_reduction_factor"):
        TuneConfig(asha_reduction_factor=1)


def test_features_values_and_tune_domains() -> None:
    assert features_value("a+b") == ["a", "b"] and features_value(["a"]) == ["a"] and features_value("a") == ["a"]
    domain = to_tune_domain({"choice": [["a", "b"], "c"]}, "model.features")
    assert sorted(domain.categories) == ["a+b", "c"]  # strings: every search algorithm can sample them
    assert to_tune_domain({"grid": [1, 2]}) == {"grid_search": [1, 2]}
    assert to_tune_domain({"randint": [1, 4]}).upper == 4


def test_max_evaluations_covers_every_searched_epoch_count() -> None:
    train = TrainConfig(epochs=10, eval=EvalConfig(every=3))
    assert max_evaluations(train, {}) == 4
    assert max_evaluations(train, {"train.epochs": {"choice": [5, 20]}}) == 7
    assert max_evaluations(train, {"train.epochs": {"randint": [5, 13]}, "train.eval.every": {"grid": [2, 4]}}) == 6


def test_plan_one_joint_sweep_for_random_and_one_per_cell_for_optuna(tmp_path: Path) -> None:
    raw = sweep_config(tmp_path, model=[{"name": "lightgcn"}, {"name": "vbpr", "features": ["img", "txt"]},
                                        {"name": "freedom", "features": ["img", "txt"]}],
                       search={**REPRESENTATIONS, "model.embedding_dim": {"choice": [8, 16]}}, num_samples=2)
    cfg = config_from_dict(raw)
    [joint] = plan_sweeps(cfg)
    assert joint.name == JOINT_SWEEP and joint.num_samples == 2 and set(joint.sampled) == {"model.embedding_dim"}
    assert [p[ENTRY_KEY] for p in joint.points] == [0] + [1] * 5 + [2] * 3
    space = joint.param_space()
    assert len(space[GRID_KEY]["grid_search"]) == 9
    assert trial_params({GRID_KEY: joint.points[3], "model.embedding_dim": 8}) == (
        1, {"model.features": ["img", "txt"], "model.fusion": "attention", "model.embedding_dim": 8})

    raw["tune"]["search"] = {**REPRESENTATIONS, "train.learning_rate": {"loguniform": [1e-3, 1e-1]}}
    raw["tune"]["search_alg"] = "optuna"
    sweeps = plan_sweeps(config_from_dict(raw))
    assert [s.name for s in sweeps] == [
        "tune-00-lightgcn-p00", "tune-01-vbpr-img+txt-concat-p00", "tune-01-vbpr-img+txt-mean-p01",
        "tune-01-vbpr-img+txt-attention-p02", "tune-01-vbpr-lvlm_mean-p03", "tune-01-vbpr-lvlm_desc-p04",
        "tune-02-freedom-img+txt-p00", "tune-02-freedom-lvlm_mean-p01", "tune-02-freedom-lvlm_desc-p02"]
    assert all(len(s.points) == 1 and s.search_alg == "optuna" and s.num_samples == 2 for s in sweeps)


def test_models_nothing_sampled_applies_to_run_once_per_point(tmp_path: Path) -> None:
    raw = sweep_config(tmp_path, model=[{"name": "lightgcn"}, {"name": "lattice", "features": ["img"]}],
                       search={"model.knn_k": {"choice": [3, 5]}}, num_samples=3)
    joint, unsampled = plan_sweeps(config_from_dict(raw))
    assert [p[ENTRY_KEY] for p in joint.points] == [1] and joint.num_samples == 3
    assert [p[ENTRY_KEY] for p in unsampled.points] == [0] and unsampled.num_samples == 1


def test_trial_resources_split_gpus_across_train_workers(tmp_path: Path) -> None:
    cfg = config_from_dict(sweep_config(tmp_path, num_workers=2, gpus_per_trial=0.5))
    train, gpus_per_worker = trial_train(cfg, cfg.train)
    assert train.scaling.num_workers == 2 and train.scaling.use_gpu and gpus_per_worker == 0.25
    cpu = config_from_dict(sweep_config(tmp_path))
    assert trial_train(cpu, cpu.train)[0].scaling.use_gpu is False and trial_train(cpu, cpu.train)[1] is None


@pytest.mark.parametrize("name", ["optuna", "hyperopt"])
def test_missing_optional_search_alg_says_what_to_install(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setitem(sys.modules, name, None)  # import fails as if not installed
    with pytest.raises(ConfigError, match=rf"pip install 'rmm\[{name}\]'"):
        require_search_alg(name)
    require_search_alg("random")


def test_a_sweep_resumes_only_with_the_plan_it_started_with(tmp_path: Path) -> None:
    from rmm.tune.search import _check_same_plan, _plan_fingerprint

    write_planted_dataset(tmp_path / "data" / "synthetic")
    raw = sweep_config(tmp_path, search=REPRESENTATIONS | {"model.features": {"grid": [["img"], ["txt"]]}})
    cfg = config_from_dict(raw)
    [sweep] = plan_sweeps(cfg)
    plan_file = tmp_path / "tune-sweep.sweep.json"
    plan_file.write_text(json.dumps(_plan_fingerprint(cfg, cfg.model, sweep)))
    # How trials run (workers' CPUs, concurrency) may change on resume ...
    raw["train"]["scaling"]["cpus_per_worker"] = 0.25
    raw["tune"]["max_concurrent_trials"] = 4
    same = config_from_dict(raw)
    _check_same_plan(plan_file, _plan_fingerprint(same, same.model, plan_sweeps(same)[0]), tmp_path)
    # ... what they compute may not.
    raw["tune"]["search"]["model.features"] = {"grid": [["img"]]}
    raw["train"]["epochs"] = 3
    other = config_from_dict(raw)
    with pytest.raises(ConfigError, match="started with other points, train than the config now gives"):
        _check_same_plan(plan_file, _plan_fingerprint(other, other.model, plan_sweeps(other)[0]), tmp_path)
    # ... nor the dataset under an unchanged config (re-prepared with other content).
    write_planted_dataset(tmp_path / "data" / "synthetic", seed=1)
    with pytest.raises(ConfigError, match="started with other dataset_files than"):
        _check_same_plan(plan_file, _plan_fingerprint(same, same.model, plan_sweeps(same)[0]), tmp_path)


def test_a_model_entry_brings_its_own_grid(tmp_path: Path) -> None:
    raw = sweep_config(tmp_path, model=[{"name": "lightgcn", "search": {"model.num_layers": {"grid": [1, 2]}}},
                                        {"name": "bprmf", "search": {"model.reg_weight": {"grid": [1.0, 0.1]}}}],
                       search={"train.learning_rate": {"grid": [1e-3]}})
    [sweep] = plan_sweeps(config_from_dict(raw))
    assert [(p[ENTRY_KEY], p.get("model.num_layers"), p.get("model.reg_weight")) for p in sweep.points] == [
        (0, 1, None), (0, 2, None), (1, None, 1.0), (1, None, 0.1)]
    raw["model"][1]["search"] = {"model.num_layers": {"grid": [1]}}  # BPR-MF has no layers
    with pytest.raises(ConfigError, match="num_layers"):
        config_from_dict(raw)
    raw["model"][1]["search"] = {"model.reg_weight": {"choice": [1.0]}}
    with pytest.raises(ConfigError, match="takes grids only"):
        config_from_dict(raw)
