"""A training run's identity: a content hash of everything that determines its result.

Two runs with the same identity compute the same thing, so a killed run resumes and a finished one is reused;
any change to what decides the numbers (a model or train setting, the dataset's items, interactions or split,
an input feature's values, the rmm version) gives a new identity, hence a fresh run beside the old ones. How a
run is executed (workers, CPUs, GPU, checkpoint interval, failure retries) is not part of it: the results do not
depend on it beyond float rounding.

Bookkeeping on files, no Ray; only :func:`run_inputs` looks the model's defaults up in the (torch) registry.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from rmm.config import DATA_DIR, FEATURES_DIR, Config, ModelConfig, TrainConfig, model_to_dict
from rmm.data.schema import dataset_fingerprint
from rmm.errors import UserError
from rmm.features.store import matrix_fingerprint
from rmm.runs import NAME_HASH_CHARS, readable_name

#: Train sub-sections that say how a run executes, not what it computes: left out of the identity.
RUNTIME_TRAIN_FIELDS = ("scaling", "fault_tolerance")


@dataclasses.dataclass(frozen=True)
class RunInputs:
    """What a run's result is computed from, as recorded in its ``run.json``.

    Attributes:
        model: the resolved model entry (name, features, fusion and every hyperparameter).
        train: the train section less :data:`RUNTIME_TRAIN_FIELDS`.
        dataset: sha256 of ``items.parquet`` and ``interactions.parquet`` (the split is a column of the latter).
        features: input feature name -> sha256 of its ``matrix.npy``.
        rmm_version: the installed rmm.
    """

    model: Mapping[str, Any]
    train: Mapping[str, Any]
    dataset: Mapping[str, str]
    features: Mapping[str, str]
    rmm_version: str

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able form (tuples as lists), as stored in ``run.json``."""
        return json.loads(json.dumps(dataclasses.asdict(self), sort_keys=True))

    @property
    def identity(self) -> str:
        """sha256 of the canonical JSON of these inputs."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()


def run_inputs(cfg: Config, model: ModelConfig, train: TrainConfig) -> RunInputs:
    """The inputs of training ``model`` with ``train`` on ``cfg``'s dataset and feature store, read from disk now.
    A model entry without params counts as its model's defaults, spelled out (the same run either way)."""
    from rmm.models.base import model_params  # rmm.models.base imports torch: only training needs it

    return RunInputs(
        model=model_to_dict(dataclasses.replace(model, params=model_params(model))),
        train={k: v for k, v in dataclasses.asdict(train).items() if k not in RUNTIME_TRAIN_FIELDS},
        dataset=dataset_fingerprint(cfg.dataset_dir),
        features={name: matrix_fingerprint(cfg.feature_root, name) for name in model.features},
        rmm_version=metadata.version("rmm"),
    )


def seed_group(model: ModelConfig, inputs: Mapping[str, Any]) -> str:
    """The seed group of a run with these recorded ``inputs`` (:meth:`RunInputs.to_dict`): the runs whose inputs
    differ in ``train.seed`` alone share it, so the report can show them as one configuration, mean ± std over the
    seeds. Named like a run, the readable label plus a short hash of the inputs less the seed, e.g.
    ``bprmf-seeds-3f9a0c2b1d``."""
    train = {k: v for k, v in inputs["train"].items() if k not in ("seed", "seeds")}
    digest = hashlib.sha256(json.dumps({**inputs, "train": train}, sort_keys=True).encode()).hexdigest()
    return f"{readable_name(model)}-seeds-{digest[:NAME_HASH_CHARS]}"


def changed_inputs(recorded: Mapping[str, Any], out_dir: str | Path, dataset_name: str) -> list[str]:
    """Which recorded inputs of a run (``run.json``'s ``inputs``) no longer match what ``out_dir`` holds: the
    dataset's files, each feature's matrix (a file that is gone counts as changed). Empty when all match."""
    changed = []
    try:
        now = dataset_fingerprint(Path(out_dir) / DATA_DIR / dataset_name)
    except UserError:
        now = {}
    changed += [f"dataset {name}" for name, sha in recorded.get("dataset", {}).items() if now.get(name) != sha]
    feature_root = Path(out_dir) / FEATURES_DIR / dataset_name
    for name, sha in recorded.get("features", {}).items():
        try:
            current = matrix_fingerprint(feature_root, name)
        except (UserError, OSError):
            current = None
        if current != sha:
            changed.append(f"feature {name}")
    return changed
