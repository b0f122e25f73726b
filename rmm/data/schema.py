"""The dataset-directory contract and its reader/writer.

``<out>/data/<dataset>/`` holds ``items.parquet``, ``interactions.parquet``, ``users.parquet`` and
``dataset.json``. Every later stage reads a dataset only through :func:`load_dataset`, which checks the contract,
so a hand-edited or foreign directory fails here with the file and column named.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rmm.errors import DataError

ITEMS_FILE = "items.parquet"
INTERACTIONS_FILE = "interactions.parquet"
USERS_FILE = "users.parquet"
INFO_FILE = "dataset.json"
#: The files of a dataset directory besides images: what a process needs to load it.
DATASET_FILES = (ITEMS_FILE, INTERACTIONS_FILE, USERS_FILE, INFO_FILE)
#: Elements of a float32 block :func:`nonfinite_rows` checks at once.
_CHECK_ELEMENTS = 1 << 22

ITEM_COLUMNS = ("item_id", "source_id", "title", "text", "image_path")
INTERACTION_COLUMNS = ("user_id", "item_id", "timestamp", "split")
USER_COLUMNS = ("user_id", "source_id")

TRAIN, VALID, TEST = 0, 1, 2


@dataclass(frozen=True)
class Dataset:
    """A prepared dataset: dense ids, one split label per interaction."""

    root: Path
    items: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame
    info: Mapping[str, Any]

    @property
    def num_users(self) -> int:
        return len(self.users)

    @property
    def num_items(self) -> int:
        return len(self.items)

    def split(self, which: int) -> pd.DataFrame:
        """Interactions of one split (TRAIN, VALID or TEST)."""
        return self.interactions[self.interactions["split"] == which]

    @property
    def items_sha256(self) -> str:
        """sha256 of ``items.parquet``: the lineage a feature of this dataset must record."""
        return dataset_fingerprint(self.root)[ITEMS_FILE]


def dataset_fingerprint(root: str | Path) -> dict[str, str]:
    """sha256 of ``items.parquet`` and ``interactions.parquet`` (split labels included) as they are on disk now:
    what a training run's identity records of its dataset.

    Raises:
        DataError: no prepared dataset at ``root``, or its files differ from the sha256 ``dataset.json``
            recorded when it was prepared (they were changed by hand since).
    """
    root = Path(root)
    if not (root / INFO_FILE).exists():
        raise DataError(f"{root} is not a prepared dataset (no {INFO_FILE}); run `rmm data prepare CONFIG`")
    recorded = json.loads((root / INFO_FILE).read_text()).get("sha256", {})
    actual = {name: sha256_file(root / name) for name in (ITEMS_FILE, INTERACTIONS_FILE)}
    changed = sorted(name for name in actual if recorded.get(name) != actual[name])
    if changed:
        raise DataError(f"{root}: {', '.join(changed)} differ(s) from what {INFO_FILE} recorded at preparation; "
                        f"re-run `rmm data prepare CONFIG` instead of editing a prepared dataset")
    return actual


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def nonfinite_rows(matrix: np.ndarray) -> np.ndarray:
    """Indices (ascending) of the rows of a 2-D ``matrix`` holding a NaN or an infinity once cast to float32, the
    feature store's dtype (a float64 value beyond the float32 range counts). The finite check of every stored
    vector, extracted or imported (so it lives here, below both the importers and the store); checked in blocks of
    rows, so a large matrix gets no full-size boolean copy."""
    step = max(1, _CHECK_ELEMENTS // max(1, matrix.shape[1]))
    bad = [np.empty(0, dtype=np.int64)]
    with np.errstate(over="ignore", invalid="ignore"):  # the cast overflowing to inf is what is looked for
        for start in range(0, len(matrix), step):
            block = np.asarray(matrix[start:start + step], dtype=np.float32)
            bad.append(start + np.flatnonzero(~np.isfinite(block).all(axis=1)))
    return np.concatenate(bad)


def write_dataset(root: str | Path, items: pd.DataFrame, interactions: pd.DataFrame, users: pd.DataFrame,
                  info: Mapping[str, Any]) -> Path:
    """Write the three parquet files and ``dataset.json`` (counts and sha256 of the parquet files added)."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    items = items.astype({"item_id": "int64"}).sort_values("item_id").reset_index(drop=True)
    interactions = interactions.astype({"user_id": "int64", "item_id": "int64", "timestamp": "int64",
                                        "split": "int8"}).reset_index(drop=True)
    users = users.astype({"user_id": "int64"}).sort_values("user_id").reset_index(drop=True)
    _check_columns(items, ITEM_COLUMNS, root / ITEMS_FILE)
    _check_columns(interactions, INTERACTION_COLUMNS, root / INTERACTIONS_FILE)
    _check_columns(users, USER_COLUMNS, root / USERS_FILE)
    items.to_parquet(root / ITEMS_FILE, index=False)
    interactions.to_parquet(root / INTERACTIONS_FILE, index=False)
    users.to_parquet(root / USERS_FILE, index=False)
    counts = {
        "users": len(users),
        "items": len(items),
        "interactions": len(interactions),
        "train": int((interactions["split"] == TRAIN).sum()),
        "valid": int((interactions["split"] == VALID).sum()),
        "test": int((interactions["split"] == TEST).sum()),
    }
    full = {**info, "counts": {**counts, **dict(info.get("counts", {}))},
            "sha256": {ITEMS_FILE: sha256_file(root / ITEMS_FILE),
                       INTERACTIONS_FILE: sha256_file(root / INTERACTIONS_FILE)}}
    (root / INFO_FILE).write_text(json.dumps(full, indent=2))
    return root


def load_dataset(root: str | Path) -> Dataset:
    """Read and validate a dataset directory.

    Raises:
        DataError: a missing file or column, non-dense ids, or interactions naming unknown users/items.
    """
    root = Path(root)
    if not (root / INFO_FILE).exists():
        raise DataError(f"{root} is not a prepared dataset (no {INFO_FILE}); run `rmm data prepare CONFIG`")
    items = pd.read_parquet(root / ITEMS_FILE)
    interactions = pd.read_parquet(root / INTERACTIONS_FILE)
    users = pd.read_parquet(root / USERS_FILE)
    _check_columns(items, ITEM_COLUMNS, root / ITEMS_FILE)
    _check_columns(interactions, INTERACTION_COLUMNS, root / INTERACTIONS_FILE)
    _check_columns(users, USER_COLUMNS, root / USERS_FILE)
    _check_dense(items["item_id"].to_numpy(), root / ITEMS_FILE, "item_id")
    _check_dense(users["user_id"].to_numpy(), root / USERS_FILE, "user_id")
    for column, size, path in (("item_id", len(items), ITEMS_FILE), ("user_id", len(users), USERS_FILE)):
        bad = interactions[(interactions[column] < 0) | (interactions[column] >= size)]
        if len(bad):
            raise DataError(f"{root / INTERACTIONS_FILE}: {column} {int(bad[column].iloc[0])} is not in "
                            f"{path} ({len(bad)} such rows)")
    info = json.loads((root / INFO_FILE).read_text())
    return Dataset(root=root, items=items, interactions=interactions, users=users, info=info)


def _check_columns(frame: pd.DataFrame, columns: tuple[str, ...], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def _check_dense(ids: np.ndarray, path: Path, column: str) -> None:
    if len(ids) and not np.array_equal(np.sort(ids), np.arange(len(ids))):
        raise DataError(f"{path}: {column} must be dense 0..{len(ids) - 1} (run `rmm data prepare`)")
