"""A tiny sweep setup: the planted dataset, two random content features and a sweep config over them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import yaml

from rmm.data.schema import load_dataset
from rmm.features.store import write_feature
from tests.train.planted import write_planted_dataset

FEATURES = ("feat_a", "feat_b")


def write_inputs(out: Path) -> None:
    """``<out>/data/synthetic`` (planted, 80 users x 40 items) and ``feat_a`` / ``feat_b`` in the feature store."""
    dataset = load_dataset(write_planted_dataset(out / "data" / "synthetic"))
    rng = np.random.default_rng(0)
    for name in FEATURES:
        write_feature(out / "features" / "synthetic", name, rng.normal(size=(dataset.num_items, 8)),
                      {"kind": "test", "items_sha256": dataset.items_sha256})


def sweep_config(out: Path, model: list[dict[str, Any]] | None = None, **tune: Any) -> dict[str, Any]:
    """A config (plain data) whose tune stage sweeps ``model`` (default one VBPR) with ``tune`` settings."""
    return {
        "stages": ["tune"],
        "model": model or [{"name": "vbpr", "features": list(FEATURES)}],
        "train": {"epochs": 2, "batch_size": 64, "learning_rate": 0.01,
                  "eval": {"every": 1, "patience": 5, "topk": [5, 10], "metric": "recall@10"},
                  "scaling": {"num_workers": 1, "cpus_per_worker": 0.5}, "fault_tolerance": {"checkpoint_every": 1}},
        "tune": {"max_concurrent_trials": 1, "num_workers": 1, **tune},
        "ray": {"num_cpus": 4},
        "output": {"dir": str(out)},
    }


def write_config(path: Path, raw: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path
