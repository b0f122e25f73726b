"""The data stage end to end: dataset.json contents, stats, re-runs, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rmm.config import config_from_dict
from rmm.data.prepare import dataset_stats, prepare_dataset
from rmm.data.schema import load_dataset
from rmm.errors import DataError


def small_config(tmp_path: Path, **dataset):
    return config_from_dict({"dataset": {"synthetic": {"num_users": 50, "num_items": 40}, **dataset},
                             "output": {"dir": str(tmp_path / "out")}})


def test_dataset_json_records_provenance(tmp_path: Path):
    cfg = small_config(tmp_path, split="random_ratio", seed=7, user_core=3, item_core=2)
    root = prepare_dataset(cfg).root
    assert root == cfg.dataset_dir
    info = json.loads((root / "dataset.json").read_text())
    assert {"name", "source", "kcore", "split", "counts", "skipped", "sha256", "timestamp_unit",
            "source_files", "features", "synthetic"} <= set(info)
    assert info["kcore"]["user_core"] == 3 and info["kcore"]["item_core"] == 2
    assert info["split"] == {"strategy": "random_ratio", "seed": 7, "ratios": [0.8, 0.1, 0.1]}
    assert {"users", "items", "interactions", "train", "valid", "test"} <= set(info["counts"])
    for entry in info["skipped"].values():
        assert set(entry) == {"count", "examples"}


def test_stats(tmp_path: Path):
    root = prepare_dataset(small_config(tmp_path)).root
    stats = dataset_stats(root)
    dataset = load_dataset(root)
    assert stats["users"] == dataset.num_users and stats["items"] == dataset.num_items
    assert sum(stats["splits"].values()) == stats["interactions"] == len(dataset.interactions)
    assert stats["density"] == pytest.approx(stats["interactions"] / (stats["users"] * stats["items"]))
    assert stats["interactions_per_user"]["min"] >= 5
    assert stats["interactions_per_item"]["max"] <= stats["users"]
    assert stats["items_with_image"] == stats["items_with_text"] == 1.0
    json.dumps(stats)  # plain types only: the CLI prints it as JSON


def test_rerun_leaves_no_stale_images(tmp_path: Path):
    prepare_dataset(small_config(tmp_path))
    stale = small_config(tmp_path).dataset_dir / "images" / "stale.png"
    stale.write_bytes(b"old")
    root = prepare_dataset(small_config(tmp_path, synthetic={"num_users": 50, "num_items": 20})).root
    images = sorted(p.name for p in (root / "images").iterdir())
    assert images == sorted(Path(p).name for p in load_dataset(root).items["image_path"])


def test_too_small_for_kcore(tmp_path: Path):
    cfg = small_config(tmp_path, synthetic={"num_users": 5, "num_items": 5, "interactions_per_user": 2},
                       user_core=5, item_core=5)
    with pytest.raises(DataError, match=r"nothing left after k-core filtering \(user_core=5, item_core=5\)"):
        prepare_dataset(cfg)
