"""The one preprocessing path every source goes through: dedup, k-core, dense ids, splits.

Importers and the synthetic generator hand over :class:`RawData` (frames keyed by source ids), so filtering
and splitting behave identically for every dataset, and every row they drop is counted in :class:`Skips`
(reported as ``skipped`` in ``dataset.json``) instead of vanishing.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rmm.config import ConfigError, DatasetConfig
from rmm.data.schema import INFO_FILE, TEST, TRAIN, VALID
from rmm.errors import DataError

log = logging.getLogger(__name__)

#: Splits that read ``dataset.split_ratios``.
RATIO_SPLITS = ("temporal_ratio", "random_ratio", "mmrec_random", "global_temporal")
#: ``mmrec_random``: users with fewer interactions get n-2 / 1 / 1, as in MMRec's splitting notebook.
MMREC_SMALL_USER = 10
#: Splits whose per-user order is time: a user's cold-item interactions go to valid first, then test, by time.
TEMPORAL_SPLITS = ("temporal_ratio", "leave_last_out", "global_temporal")
#: ``dataset.json``'s section on the items ``dataset.cold_items`` held out of training.
COLD_INFO = "cold_items"
#: Second seed word of the cold-item draws, so they are a random stream of their own beside the split's.
_COLD_STREAM = 1


class Skips:
    """Counts of rows or items dropped per reason, with a few example ids, for ``dataset.json``.

    A reason added with no ids is still reported (count 0), so a reader sees a check ran and found nothing.
    """

    max_examples = 5

    def __init__(self) -> None:
        self._counts: dict[str, int] = {}
        self._examples: dict[str, list[str]] = {}

    def add(self, reason: str, ids: Iterable[Any], count: int | None = None) -> None:
        """Record ``count`` drops (default: the number of ``ids``) under ``reason``; keep the first ids."""
        ids = [str(i) for i in ids]
        count = len(ids) if count is None else count
        self._counts[reason] = self._counts.get(reason, 0) + count
        examples = self._examples.setdefault(reason, [])
        examples.extend(ids[: self.max_examples - len(examples)])
        if count:
            log.warning("skipped %d (%s), e.g. %s", count, reason, examples)

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {r: {"count": self._counts[r], "examples": self._examples[r]} for r in sorted(self._counts)}


@dataclass(frozen=True)
class ImportedFeature:
    """A ready-made item feature shipped with the source; row ``r`` belongs to row ``r`` of ``RawData.items``."""

    matrix: np.ndarray
    source: Path


@dataclass(frozen=True)
class RawData:
    """What a source hands to :func:`preprocess`.

    Attributes:
        items: one row per item: ``source_id`` (str, unique), ``title``, ``text``, ``image_source`` (path of
            an image to verify and copy, or None); extra attribute columns pass through.
        interactions: ``user``, ``item`` (source ids, str), ``timestamp`` (int64), plus ``split`` (int8) when
            the source ships one (``split: predefined``).
        source_files: the input files read, for ``dataset.json``.
        timestamp_unit: ``s`` or ``ms``, as the source records it.
        features: ready-made features by store name.
    """

    items: pd.DataFrame
    interactions: pd.DataFrame
    source_files: Mapping[str, str] = field(default_factory=dict)
    timestamp_unit: str = "s"
    features: Mapping[str, ImportedFeature] = field(default_factory=dict)


@dataclass(frozen=True)
class Prepared:
    """Dense-id frames ready for ``schema.write_dataset``.

    Attributes:
        items: ``item_id`` plus the raw item columns (``image_source`` still to be resolved).
        interactions: ``user_id``, ``item_id``, ``timestamp``, ``split``.
        users: ``user_id``, ``source_id``.
        item_rows: for each new ``item_id``, its row in ``RawData.items`` (to reorder imported features).
        info: k-core and split facts (and the cold items, see :func:`cold_item_info`) for ``dataset.json``.
    """

    items: pd.DataFrame
    interactions: pd.DataFrame
    users: pd.DataFrame
    item_rows: np.ndarray
    info: dict[str, Any]


def preprocess(raw: RawData, cfg: DatasetConfig, skips: Skips) -> Prepared:
    """Dedup, k-core filter, remap to dense ids and split ``raw`` as ``cfg`` says.

    Raises:
        DataError: nothing is left after k-core filtering.
        ConfigError: ``split: predefined`` for a source that ships no split.
    """
    if cfg.split == "predefined" and "split" not in raw.interactions.columns:
        raise ConfigError(f"dataset.split: predefined keeps a split shipped with the data, but source "
                          f"{cfg.source!r} ships none; choose one of temporal_ratio, random_ratio, mmrec_random, "
                          f"leave_last_out, global_temporal")
    if raw.interactions.empty:
        raise DataError(f"dataset {cfg.name!r}: the source has no interactions (read {dict(raw.source_files)})")
    inter = dedup(raw.interactions, skips)
    unused = ~raw.items["source_id"].isin(inter["item"])
    skips.add("items_without_interactions", raw.items.loc[unused, "source_id"])
    before = _counts(inter)
    inter, rounds = kcore(inter, cfg.user_core, cfg.item_core)
    if inter.empty:
        raise DataError(f"dataset {cfg.name!r}: nothing left after k-core filtering (user_core={cfg.user_core}, "
                        f"item_core={cfg.item_core}); before filtering: {before['users']} users, "
                        f"{before['items']} items, {before['interactions']} interactions; lower "
                        f"dataset.user_core / dataset.item_core")
    item_ids = sorted_ids(inter["item"].unique())
    raw_index = pd.Index(raw.items["source_id"])
    item_rows = raw_index.get_indexer(item_ids)
    items = raw.items.iloc[item_rows].reset_index(drop=True)
    items.insert(0, "item_id", np.arange(len(items), dtype=np.int64))

    user_index = pd.Index(sorted_ids(inter["user"].unique()))
    frame = pd.DataFrame({
        "user_id": user_index.get_indexer(inter["user"]).astype(np.int64),
        "item_id": pd.Index(item_ids).get_indexer(inter["item"]).astype(np.int64),
        "timestamp": inter["timestamp"].to_numpy(np.int64),
    })
    if cfg.split == "predefined":
        frame["split"] = inter["split"].to_numpy(np.int8)
    frame = frame.sort_values(["user_id", "timestamp", "item_id"], kind="mergesort").reset_index(drop=True)
    cold = pick_cold_items(len(items), cfg)
    if cfg.split != "predefined":
        frame["split"] = split_with_cold_items(frame, cfg, cold)
    frame, users = _drop_users_without_train(frame, user_index, skips)

    split_info: dict[str, Any] = {"strategy": cfg.split, "seed": cfg.seed}
    if cfg.split in RATIO_SPLITS:
        split_info["ratios"] = list(cfg.split_ratios)
    info = {"kcore": {"user_core": cfg.user_core, "item_core": cfg.item_core, "rounds": rounds,
                      "before": before, "after": _counts(inter)},
            "split": split_info}
    if cfg.cold_items:
        info[COLD_INFO] = cold_item_info(frame, cold, cfg.cold_items)
    return Prepared(items=items, interactions=frame, users=users, item_rows=item_rows, info=info)


def sorted_ids(values: Iterable[str]) -> list[str]:
    """Source ids in the order dense ids are given: numerically when all are digits (so MMRec's and
    MovieLens's integer ids keep their order), else lexicographically."""
    values = list(values)
    if all(v.isdigit() for v in values):
        return sorted(values, key=lambda v: (int(v), v))
    return sorted(values)


def dedup(inter: pd.DataFrame, skips: Skips) -> pd.DataFrame:
    """Keep the earliest interaction of each (user, item) pair (the first in the file on equal timestamps)."""
    inter = inter.sort_values("timestamp", kind="mergesort")
    repeated = inter.duplicated(["user", "item"], keep="first")
    skips.add("duplicate_interactions", (inter.loc[repeated, "user"] + "/" + inter.loc[repeated, "item"]))
    return inter[~repeated].reset_index(drop=True)


def kcore(inter: pd.DataFrame, user_core: int, item_core: int) -> tuple[pd.DataFrame, int]:
    """Iteratively drop users with fewer than ``user_core`` and items with fewer than ``item_core``
    interactions until both hold (0 switches a side off). Returns the filtered frame and the rounds run."""
    rounds = 0
    while True:
        keep = np.ones(len(inter), dtype=bool)
        if user_core:
            keep &= inter.groupby("user")["item"].transform("size").to_numpy() >= user_core
        if item_core:
            keep &= inter.groupby("item")["user"].transform("size").to_numpy() >= item_core
        if keep.all():
            return inter, rounds
        inter = inter[keep].reset_index(drop=True)
        rounds += 1


def assign_splits(frame: pd.DataFrame, cfg: DatasetConfig) -> np.ndarray:
    """Split label per row of ``frame`` (sorted by user_id, timestamp, item_id), as ``cfg.split`` says.

    Per-user strategies give every user at least one train item and, where the ratio is positive and the
    user has enough interactions, at least one valid and one test item; the rest follows ``split_ratios``.
    """
    n_rows = len(frame)
    if cfg.split == "global_temporal":
        order = np.lexsort((frame["item_id"], frame["user_id"], frame["timestamp"]))
        cut_train = int(_round(n_rows * cfg.split_ratios[0]))
        cut_valid = int(_round(n_rows * (cfg.split_ratios[0] + cfg.split_ratios[1])))
        split = np.full(n_rows, TEST, dtype=np.int8)
        split[order[:cut_train]] = TRAIN
        split[order[cut_train:cut_valid]] = VALID
        return split

    users = frame["user_id"].to_numpy()
    if cfg.split in ("random_ratio", "mmrec_random"):
        shuffled = np.lexsort((np.random.default_rng(cfg.seed).random(n_rows), users))
    else:  # temporal_ratio, leave_last_out: frame is already in time order within each user
        shuffled = np.arange(n_rows)
    counts = np.bincount(users)
    n = counts[users[shuffled]]
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(n_rows) - starts[users[shuffled]]
    if cfg.split == "leave_last_out":
        n_valid, n_test = (n >= 3).astype(int), (n >= 2).astype(int)
    elif cfg.split == "mmrec_random":
        n_valid, n_test = _mmrec_eval_sizes(n, cfg.split_ratios[1], cfg.split_ratios[2])
    else:
        n_valid, n_test = _eval_sizes(n, cfg.split_ratios[1], cfg.split_ratios[2])
    labels = np.where(position >= n - n_test, TEST, np.where(position >= n - n_test - n_valid, VALID, TRAIN))
    split = np.empty(n_rows, dtype=np.int8)
    split[shuffled] = labels
    return split


def pick_cold_items(num_items: int, cfg: DatasetConfig) -> np.ndarray:
    """The sorted dense ids of the ``cfg.cold_items`` share of ``num_items`` items held out of training, drawn
    with ``cfg.seed``: the share rounded half up, at least one item when the share is positive and at most all
    but one (empty for a share of 0)."""
    if not cfg.cold_items:
        return np.empty(0, dtype=np.int64)
    count = min(max(int(_round(cfg.cold_items * num_items)), 1), num_items - 1)
    return np.sort(_cold_rng(cfg, 0).choice(num_items, size=count, replace=False)).astype(np.int64)


def split_with_cold_items(frame: pd.DataFrame, cfg: DatasetConfig, cold: np.ndarray) -> np.ndarray:
    """Split label per row of ``frame`` (sorted by user_id, timestamp, item_id): the rows of ``cold`` items go to
    valid or test (:func:`_cold_splits`), never train; the others are split by :func:`assign_splits` as if the
    cold rows were not there."""
    is_cold = np.isin(frame["item_id"].to_numpy(), cold)
    if not is_cold.any():
        return assign_splits(frame, cfg)
    split = np.empty(len(frame), dtype=np.int8)
    split[~is_cold] = assign_splits(frame[~is_cold].reset_index(drop=True), cfg)
    split[is_cold] = _cold_splits(frame.loc[is_cold, "user_id"].to_numpy(), cfg)
    return split


def _cold_splits(users: np.ndarray, cfg: DatasetConfig) -> np.ndarray:
    """VALID or TEST per cold-item row (``users``: their user ids, sorted), per user in the valid:test proportion
    ``p`` of ``split_ratios``: of a user's ``n`` cold rows, ``floor(n p + u)`` go to valid (``u`` uniform in
    [0, 1) per user, so the expected share is exactly ``p`` and a user with one cold row is not always sent the
    same way), the rest to test. Valid takes the earliest rows under the time-ordered splits
    (:data:`TEMPORAL_SPLITS`), a random draw of them under the random ones."""
    rng = _cold_rng(cfg, 1)
    n_rows = len(users)
    order = (np.arange(n_rows) if cfg.split in TEMPORAL_SPLITS
             else np.lexsort((rng.random(n_rows), users)))  # rows within each user in the order valid takes them
    counts = np.bincount(users)
    valid_share = cfg.split_ratios[1] / (cfg.split_ratios[1] + cfg.split_ratios[2])
    n_valid = np.floor(counts * valid_share + rng.random(len(counts))).astype(np.int64)  # (U,), <= counts
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    position = np.arange(n_rows) - starts[users[order]]
    split = np.empty(n_rows, dtype=np.int8)
    split[order] = np.where(position < n_valid[users[order]], VALID, TEST)
    return split


def _cold_rng(cfg: DatasetConfig, purpose: int) -> np.random.Generator:
    """The generator of the cold items' draws: ``purpose`` 0 picks the items, 1 splits their interactions."""
    return np.random.default_rng([cfg.seed, _COLD_STREAM, purpose])


def cold_item_info(frame: pd.DataFrame, cold: np.ndarray, share: float) -> dict[str, Any]:
    """``dataset.json``'s :data:`COLD_INFO` section of the final ``frame`` (users renumbered): the share asked
    for, the count and ids of the cold items (dense ids, comma-separated: :func:`cold_item_ids` reads them back),
    and the valid and test interactions and users on them."""
    on_cold = frame[np.isin(frame["item_id"].to_numpy(), cold)]
    parts = {"valid": on_cold[on_cold["split"] == VALID], "test": on_cold[on_cold["split"] == TEST]}
    return {"share": share, "count": len(cold), "item_ids": ",".join(map(str, cold.tolist())),
            "interactions": {name: len(part) for name, part in parts.items()},
            "users": {name: int(part["user_id"].nunique()) for name, part in parts.items()}}


def cold_item_ids(info: Mapping[str, Any]) -> np.ndarray:
    """The sorted dense ids of the cold items a dataset's ``dataset.json`` (``info``) records; empty without any.

    Raises:
        DataError: the recorded ids are not comma-separated integers.
    """
    text = (info.get(COLD_INFO) or {}).get("item_ids", "")
    try:
        return np.array(sorted(int(part) for part in text.split(",") if part), dtype=np.int64)
    except ValueError as err:
        raise DataError(f"{INFO_FILE}: {COLD_INFO}.item_ids must be comma-separated item ids, got {text[:80]!r}; "
                        f"re-run `rmm data prepare CONFIG`") from err


def _eval_sizes(n: np.ndarray, valid_ratio: float, test_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user valid/test sizes: rounded ratio, at least 1 where the ratio is positive, and never so many
    that no train item is left (valid gives way first)."""
    n_valid = np.where(valid_ratio > 0, np.maximum(_round(n * valid_ratio), 1), 0)
    n_test = np.where(test_ratio > 0, np.maximum(_round(n * test_ratio), 1), 0)
    excess = np.maximum(n_valid + n_test - (n - 1), 0)
    cut_valid = np.minimum(excess, n_valid)
    return n_valid - cut_valid, n_test - (excess - cut_valid)


def _mmrec_eval_sizes(n: np.ndarray, valid_ratio: float, test_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """Per-user valid/test sizes of MMRec's published splits: ``floor(n * (valid + test))`` evaluation items,
    of which valid gets its share rounded down (8:1:1: ``eval // 2``) and test the rest; a user with fewer than
    :data:`MMREC_SMALL_USER` interactions gets one of each (n-2 / 1 / 1)."""
    n_eval = np.floor(n * (valid_ratio + test_ratio) + 1e-9).astype(np.int64)
    n_valid = np.floor(n_eval * valid_ratio / (valid_ratio + test_ratio) + 1e-9).astype(np.int64)
    small = n < MMREC_SMALL_USER
    return np.where(small, 1, n_valid), np.where(small, 1, n_eval - n_valid)


def _round(x: Any) -> Any:
    """Round half up (numpy rounds half to even, which would make 8:1:1 of 5 items depend on parity)."""
    return np.floor(np.asarray(x) + 0.5).astype(np.int64)


def _drop_users_without_train(frame: pd.DataFrame, user_index: pd.Index,
                              skips: Skips) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Drop valid/test rows of users with no train item (nothing to learn them from), renumber users densely."""
    has_train = np.zeros(len(user_index), dtype=bool)
    has_train[frame.loc[frame["split"] == TRAIN, "user_id"].to_numpy()] = True
    orphan_rows = ~has_train[frame["user_id"].to_numpy()]
    skips.add("users_without_train_item", user_index[~has_train])
    skips.add("interactions_of_users_without_train_item",
              user_index[frame.loc[orphan_rows, "user_id"].to_numpy()], count=int(orphan_rows.sum()))
    frame = frame[~orphan_rows].reset_index(drop=True)
    new_ids = np.cumsum(has_train) - 1
    frame["user_id"] = new_ids[frame["user_id"].to_numpy()]
    users = pd.DataFrame({"user_id": np.arange(int(has_train.sum()), dtype=np.int64),
                          "source_id": user_index[has_train].to_numpy(dtype=object)})
    return frame, users


def _counts(inter: pd.DataFrame) -> dict[str, int]:
    return {"users": int(inter["user"].nunique()), "items": int(inter["item"].nunique()),
            "interactions": len(inter)}
