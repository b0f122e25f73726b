"""Config loading: sections map to dataclasses, overrides, unknown keys, malformed YAML, search validation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from rmm.config import ConfigError, config_from_dict, load_config, save_snapshot

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"


def write(tmp_path: Path, data: dict | str) -> Path:
    path = tmp_path / "cfg.yaml"
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def test_quickstart_loads_with_typed_sections() -> None:
    cfg = load_config(QUICKSTART)
    assert cfg.dataset.synthetic.num_items == 300
    assert isinstance(cfg.train.eval.topk, tuple) and 20 in cfg.train.eval.topk
    assert [m.name for m in cfg.model] == ["lightgcn", "vbpr", "vbpr"]
    assert cfg.model[1].features == ("image_stats", "text_minilm")
    assert cfg.model[1].params.__class__.__name__.endswith("Config")


def test_overrides_set_nested_values_with_yaml_types(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, ["output.dir=runs/demo", "train.learning_rate=1e-2", "train.eval.topk=[5, 20]",
                                   "dataset.synthetic.num_users=50", "model.2.fusion=mean", "ray.address=null"])
    assert cfg.out_dir == Path("runs/demo")
    assert cfg.train.learning_rate == pytest.approx(0.01)
    assert cfg.train.eval.topk == (5, 20)
    assert cfg.dataset.synthetic.num_users == 50
    assert cfg.model[2].fusion == "mean"
    assert cfg.dataset_dir == Path("runs/demo/data/synthetic")


def test_model_hyperparameter_override_reaches_model_config() -> None:
    cfg = load_config(QUICKSTART, ["model.0.embedding_dim=16"])
    assert cfg.model[0].params.embedding_dim == 16


@pytest.mark.parametrize("override, needle", [
    ("train.epoch=3", "unknown key 'epoch' in section 'train'; valid keys:"),
    ("dataset.synthetic.users=3", "unknown key 'users' in section 'dataset.synthetic'"),
    ("model.0.embeding_dim=3", "unknown key 'embeding_dim' in section 'model[0] (lightgcn)'"),
    ("bogus.key=1", "unknown section(s) ['bogus']"),
    ("train.epochs=many", "train.epochs must be an integer, got 'many'"),
    ("train.epochs=0", "epochs must be >= 1"),
    ("dataset.split=weekly", "split must be one of"),
    ("model.1.fusion=median", "fusion must be one of"),
    ("train", "must look like section.key=value"),
    ("model.7.name=x", "is not an index of a list of 3"),
])
def test_bad_values_name_the_key(override: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(QUICKSTART, [override])
    assert needle in str(err.value)
    assert "quickstart.yaml" in str(err.value)


def test_unknown_key_lists_valid_keys(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"valid keys: .*batch_size.*learning_rate"):
        load_config(write(tmp_path, {"train": {"lr": 0.1}}))


def test_unknown_model_lists_available(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"Unknown model 'vbrp'. Available: \[.*'vbpr'"):
        load_config(write(tmp_path, {"model": [{"name": "vbrp"}]}))


def test_single_model_mapping_is_accepted(tmp_path: Path) -> None:
    cfg = load_config(write(tmp_path, {"model": {"name": "bprmf"}}))
    assert len(cfg.model) == 1 and cfg.model[0].name == "bprmf"


def test_id_only_model_rejects_features(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="ID-only"):
        load_config(write(tmp_path, {"model": [{"name": "lightgcn", "features": ["text_minilm"]}]}))


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "train:\n  epochs: [1, 2\n  lr: 3\n")
    with pytest.raises(ConfigError, match=r"malformed YAML in .*cfg.yaml at line \d+"):
        load_config(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "nope.yaml")


def test_search_space_is_checked_at_load(tmp_path: Path) -> None:
    base = yaml.safe_load(QUICKSTART.read_text())
    base["tune"]["search"] = {"train.learning_rat": {"grid": [0.1]}}
    with pytest.raises(ConfigError, match="tune.search.train.learning_rat"):
        load_config(write(tmp_path, base))
    base["tune"]["search"] = {"train.learning_rate": {"normal": [0, 1]}}
    with pytest.raises(ConfigError, match="valid distributions"):
        load_config(write(tmp_path, base))
    base["tune"]["search"] = {"model.embedding_dim": {"choice": [8, 16]}, "model.fusion": {"grid": ["mean"]}}
    assert load_config(write(tmp_path, base)).tune.search["model.embedding_dim"] == {"choice": [8, 16]}


def test_snapshot_round_trips(tmp_path: Path) -> None:
    cfg = load_config(QUICKSTART, ["model.0.embedding_dim=16", "output.dir=x"])
    snapshot = save_snapshot(cfg, tmp_path)
    assert load_config(snapshot) == cfg


def test_a_protocol_sets_defaults_and_explicit_values_win(tmp_path: Path) -> None:
    from rmm.config import MMREC_TRAIN, TrainConfig

    strict = config_from_dict({"model": [{"name": "lightgcn"}]})
    assert strict.protocol == "strict" and strict.train == TrainConfig() and strict.dataset.split == "temporal_ratio"

    path = tmp_path / "mmrec.yaml"
    path.write_text(yaml.safe_dump({"protocol": "mmrec", "train": {"eval": {"patience": 5}},
                                    "model": [{"name": "lattice", "features": ["img"],
                                               "train": {"lr_decay": [0.96, 50]}}]}))
    cfg = load_config(path, ["train.seed=7"])
    assert cfg.dataset.split == "mmrec_random" and not cfg.train.eval.test_masks_valid
    assert cfg.train.negatives == "train_items" and cfg.train.eval.topk == MMREC_TRAIN["eval"]["topk"]
    # the file's value and the override win, the rest of train.eval keeps the protocol's
    assert cfg.train.eval.patience == 5 and cfg.train.seed == 7 and cfg.train.eval.metric == "recall@20"
    lattice = cfg.train_for(cfg.model[0])
    assert lattice.lr_decay == (0.96, 50) and lattice.eval.patience == 5 and cfg.train.lr_decay == (1.0, 50)
    again = config_from_dict(cfg.to_dict())  # the snapshot reloads to the same config
    assert again == cfg


def test_unknown_protocol_and_bad_model_train_keys_fail_on_load() -> None:
    with pytest.raises(ConfigError, match="protocol must be one of \\['strict', 'mmrec'\\], got 'mmrecc'"):
        config_from_dict({"protocol": "mmrecc"})
    with pytest.raises(ConfigError, match="unknown key 'lr_dcay' in section 'lightgcn train'"):
        config_from_dict({"model": [{"name": "lightgcn", "train": {"lr_dcay": [0.9, 10]}}]})


@pytest.mark.parametrize("key, value, new_place", [
    ("patience", 5, "train.eval.patience"),
    ("eval_every", 2, "train.eval.every"),
    ("num_workers", 1, "train.scaling.num_workers"),
    ("max_failures", 1, "train.fault_tolerance.max_failures"),
])
def test_a_flat_train_key_fails_naming_its_new_place(key: str, value: int, new_place: str) -> None:
    with pytest.raises(ConfigError) as err:
        config_from_dict({"train": {key: value}})
    assert str(err.value) == f"train.{key} moved to {new_place}; write it there"


def test_train_sub_sections_reject_unknown_keys_and_a_model_overrides_one_key() -> None:
    with pytest.raises(ConfigError, match="unknown key 'patient' in section 'train.eval'; valid keys: every, metric"):
        config_from_dict({"train": {"eval": {"patient": 3}}})
    cfg = config_from_dict({"train": {"eval": {"every": 2, "patience": 7}},
                            "model": [{"name": "lightgcn", "train": {"eval": {"patience": 3}}}]})
    own = cfg.train_for(cfg.model[0])
    assert (own.eval.patience, own.eval.every, cfg.train.eval.patience) == (3, 2, 7)


def test_an_extractor_entry_takes_the_keys_of_its_kind_only() -> None:
    from rmm.config import LVLMDescribeConfig, LVLMEmbedConfig, TorchvisionConfig

    cfg = config_from_dict({"features": {"extractors": [
        {"name": "e", "kind": "lvlm_embed", "model": "tiny:qwen2-vl", "poolings": ["mean", "last"]},
        {"name": "e", "kind": "lvlm_describe", "model": "tiny:qwen2-vl", "max_new_tokens": 8},
        {"name": "r", "kind": "torchvision", "weights": None, "max_image_size": 64}]}})
    kinds = [type(e) for e in cfg.features.extractors]
    assert kinds == [LVLMEmbedConfig, LVLMDescribeConfig, TorchvisionConfig]
    assert cfg.features.extractors[1].max_new_tokens == 8 and cfg.features.extractors[2].max_image_size == 64
    with pytest.raises(ConfigError) as err:
        config_from_dict({"features": {"extractors": [{"name": "e", "kind": "lvlm_embed", "max_new_tokens": 8}]}})
    message = str(err.value)
    assert "unknown key 'max_new_tokens' in section 'features.extractors[0] (lvlm_embed)'" in message
    assert "poolings" in message and "temperature" not in message  # the valid keys of lvlm_embed only
    with pytest.raises(ValueError, match="extractor kind 'vit' takes a ViTConfig, got a LVLMEmbedConfig"):
        LVLMEmbedConfig(name="e", kind="vit")


def test_loading_a_config_imports_neither_torch_nor_numpy_nor_pyarrow(tmp_path: Path) -> None:
    import subprocess
    import sys

    path = write(tmp_path, {"train": {"epochs": 3}, "features": {"extractors": [{"name": "s", "kind": "sentence"}]}})
    code = (f"import sys; from rmm.config import load_config; cfg = load_config({str(path)!r}); "
            f"assert cfg.train.epochs == 3; print(sorted({{'torch', 'numpy', 'pyarrow'}} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
