"""The catalogue of values that would make a stage fail, hang or mislead: each ends `rmm train` in one line
with exit code 2 before any Ray work, within seconds (no traceback, no hang, no NaN in results.json)."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from rmm.cli import main
from rmm.data.schema import TEST, VALID, load_dataset, write_dataset
from rmm.features.store import write_feature
from tests.train.planted import write_planted_dataset

# (override, what the one line must say). Config values: checked when the config loads.
AT_LOAD = [
    ("train.eval.topk=[0, 20]", "topk must be distinct cut-offs >= 1"),
    ("train.eval.topk=[-5, 20]", "topk must be distinct cut-offs >= 1"),
    ("train.eval.topk=[20, 20]", "topk must be distinct cut-offs >= 1"),
    ("train.weight_decay=-1", "weight_decay must be >= 0"),
    ("train.learning_rate=0", "learning_rate must be > 0"),
    ("train.learning_rate=.nan", "learning_rate must be > 0"),
    ("train.scaling.cpus_per_worker=0", "cpus_per_worker must be > 0"),
    ("train.scaling.num_workers=0", "num_workers must be >= 1"),
    ("train.fault_tolerance.max_failures=-5", "max_failures must be >= -1"),
    ("train.epochs=0", "epochs must be >= 1"),
    ("train.eval.metric=hits@20", "metric 'hits@20' must be '<name>@K' with name one of"),
    ("train.eval.metric=recall@30", "metric 'recall@30' must be '<name>@K'"),
    ("train.precision=fp8", "precision must be fp32 or bf16"),
    ("ray.num_cpus=0", "num_cpus must be >= 1"),
    ("ray.num_gpus=-1", "num_gpus must be >= 0"),
    ("train.scaling.num_workers=8",
     "train.scaling.num_workers x cpus_per_worker = 4 CPUs, more than the 2 of the local Ray"),
    ("train.scaling.use_gpu=true", "train.scaling.use_gpu with num_workers = 2 needs 2 GPUs, the local Ray has 0"),
    ("train.patience=3", "train.patience moved to train.eval.patience"),
    ("dataset.split_ratios=[0.9, 0.1, 0.0]", "leave the test part empty"),
    ("dataset.split_ratios=[0.9, 0.0, 0.1]", "leave the valid part empty"),
    ("dataset.split_ratios=[1.2, -0.1, -0.1]", "split_ratios must be three numbers in [0, 1] summing to 1"),
    ("dataset.split_ratios=[0.5, 0.2]", "split_ratios must have 3 items"),
    ("model.0.features=[../../x]", "feature '../../x' is not a feature-store name"),
    ("model.0.features=[.hidden]", "feature '.hidden' is not a feature-store name"),
    ("model.0.features=[image, image]", "features must not repeat"),
    ("model.0.name=nosuchmodel", "Unknown model 'nosuchmodel'. Available:"),
    ("features.extractors=[{name: ../x, kind: image_stats}]", "extractor name '../x' is not a feature-store name"),
    ("features.extractors=[{name: a, kind: image_stats, num_cpus: -1}]", "num_cpus must be >= 0"),
    ("features.extractors=[{name: a, kind: image_stats, pooling: cls}]",
     "unknown key 'pooling' in section 'features.extractors[0] (image_stats)'; valid keys: batch_size"),
    ("features.extractors=[{name: a, kind: vit, pooling: last}]", "pooling must be cls or mean, got 'last'"),
    ("features.extractors=[{name: a, kind: resnet}]", "unknown extractor kind 'resnet'; valid kinds: clip_image"),
    ("output.dir=''", "output.dir must name a directory or URI"),
    ("tune.cpus_per_trial=0", "cpus_per_trial must be > 0"),
]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A planted dataset (40 items) with one feature made from its items."""
    out = tmp_path_factory.mktemp("validation")
    dataset = load_dataset(write_planted_dataset(out / "data" / "synthetic"))
    write_feature(out / "features" / "synthetic", "image", np.random.default_rng(0).normal(size=(40, 4)),
                  {"kind": "test", "items_sha256": dataset.items_sha256})
    return out


@pytest.fixture(scope="module")
def config(out: Path) -> Path:
    path = out / "train.yaml"
    path.write_text(yaml.safe_dump({
        "stages": ["train"], "model": [{"name": "vbpr", "features": ["image"]}],
        "train": {"epochs": 1, "eval": {"topk": [10, 20]}, "scaling": {"num_workers": 2, "cpus_per_worker": 0.5}},
        "ray": {"num_cpus": 2, "num_gpus": 0}, "output": {"dir": str(out)}}))
    return path


@pytest.fixture(autouse=True)
def no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tripwire: every error here must come before training starts, in this process or in Ray."""
    import rmm.train.ray_trainer
    import rmm.train.run

    def tripped(*args: object, **kwargs: object) -> None:
        raise AssertionError("training started before the bad value was refused")

    monkeypatch.setattr(rmm.train.ray_trainer, "init_ray", tripped)
    monkeypatch.setattr(rmm.train.run, "fit_in_process", tripped)


def _fails_in_one_line(config: Path, overrides: list[str], expected: str,
                       capsys: pytest.CaptureFixture[str]) -> None:
    args = [item for override in overrides for item in ("--set", override)]
    started = time.monotonic()
    assert main(["train", str(config), *args]) == 2
    seconds = time.monotonic() - started
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("rmm: error: ") and expected in err, err
    assert seconds < 10


@pytest.mark.parametrize(("override", "expected"), AT_LOAD, ids=[o for o, _ in AT_LOAD])
def test_a_bad_value_fails_when_the_config_loads(config: Path, override: str, expected: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    _fails_in_one_line(config, [override], expected, capsys)


def test_a_cut_off_beyond_the_items_fails_once_the_dataset_is_known(config: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _fails_in_one_line(config, ["train.eval.topk=[20, 50]"],
                       "train.eval.topk [20, 50] asks for cut-offs beyond the 40 items", capsys)


def test_features_of_other_items_are_refused(config: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = out / "features" / "synthetic"
    write_feature(root, "other", np.ones((40, 4)), {"kind": "test", "items_sha256": "f" * 64})
    _fails_in_one_line(config, ["model.0.features=[other]"],
                       "feature 'other' was made from items with sha256 ffffffffffff", capsys)


def test_a_dataset_without_test_interactions_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    dataset = load_dataset(write_planted_dataset(tmp_path / "data" / "synthetic"))
    interactions = dataset.interactions.assign(split=dataset.interactions["split"].replace(TEST, VALID))
    write_dataset(dataset.root, dataset.items, interactions, dataset.users, {"name": "planted", "source": "test"})
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"stages": ["train"], "model": [{"name": "lightgcn"}],
                                      "train": {"eval": {"topk": [10, 20]}}, "ray": {"num_cpus": 2},
                                      "output": {"dir": str(tmp_path)}}))
    _fails_in_one_line(config, [], "has no test interactions, so test metrics cannot be computed", capsys)
