"""Amazon Reviews (McAuley lab) 2018 and 2023: reviews JSON lines + item metadata JSON lines.

The release is recognised per file from the keys of its first record, because both releases circulate
under the same category names. 2018 keys items by ``asin`` with timestamps in seconds; 2023 keys them by
``parent_asin`` (the product, not the variant) with timestamps in milliseconds, kept as they are.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from rmm.config import DatasetConfig
from rmm.data.importers import (
    check_unique,
    drop_unknown_items,
    index_images,
    raw_path,
    read_json_lines,
    require_keys,
)
from rmm.data.preprocess import RawData, Skips
from rmm.errors import ConfigError, DataError

#: release -> (user key, item key, timestamp key) of a review record.
REVIEW_KEYS = {"2018": ("reviewerID", "asin", "unixReviewTime"), "2023": ("user_id", "parent_asin", "timestamp")}
#: release -> (item key, description key, features key) of a metadata record.
META_KEYS = {"2018": ("asin", "description", "feature"), "2023": ("parent_asin", "description", "features")}
TIMESTAMP_UNITS = {"2018": "s", "2023": "ms"}
#: Keys that identify the release of a file's first record (2023 first: its reviews also carry ``asin``).
REVIEW_MARKERS = {"2023": ("user_id", "parent_asin"), "2018": ("reviewerID", "asin")}
META_MARKERS = {"2023": ("parent_asin",), "2018": ("asin",)}


def load(cfg: DatasetConfig, skips: Skips) -> RawData:
    """Read reviews (``dataset.path``) and metadata (``dataset.metadata_path``); images from
    ``dataset.images_dir/<item id>.jpg|.jpeg|.png`` when given (missing images are allowed)."""
    if not cfg.metadata_path:
        raise ConfigError("source 'amazon' needs dataset.metadata_path (the item metadata JSON lines)")
    reviews_path, meta_path = raw_path(cfg), Path(cfg.metadata_path)
    interactions, release = _read_reviews(reviews_path)
    items = _read_metadata(meta_path, skips)
    interactions = drop_unknown_items(interactions, items["source_id"], cfg, reviews_path, meta_path, skips)
    images = index_images(cfg.images_dir)
    items["image_source"] = [str(images[i]) if i in images else None for i in items["source_id"]]
    files = {"reviews": str(reviews_path), "metadata": str(meta_path)}
    if cfg.images_dir:
        files["images"] = cfg.images_dir
    return RawData(items=items, interactions=interactions, source_files=files,
                   timestamp_unit=TIMESTAMP_UNITS[release])


def _release(record: dict[str, Any], markers: Mapping[str, tuple[str, ...]], path: Path, line: int) -> str:
    """The release whose marker keys the first record carries."""
    for release, keys in markers.items():
        if all(k in record for k in keys):
            return release
    expected = {release: list(keys) for release, keys in markers.items()}
    raise DataError(f"{path}: line {line} is neither an Amazon 2018 nor a 2023 record: expected keys "
                    f"{expected}, found {sorted(record)}")


def _read_reviews(path: Path) -> tuple[pd.DataFrame, str]:
    users: list[str] = []
    items: list[str] = []
    times: list[int] = []
    release = ""
    for line, record in read_json_lines(path):
        release = release or _release(record, REVIEW_MARKERS, path, line)
        user_key, item_key, time_key = REVIEW_KEYS[release]
        require_keys(record, REVIEW_KEYS[release], path, line)
        if not isinstance(record[time_key], (int, float)) or isinstance(record[time_key], bool):
            raise DataError(f"{path}: line {line}: {time_key} {record[time_key]!r} is not a number")
        users.append(str(record[user_key]))
        items.append(str(record[item_key]))
        times.append(int(record[time_key]))
    if not release:
        raise DataError(f"{path}: no reviews in the file")
    frame = pd.DataFrame({"user": users, "item": items, "timestamp": pd.Series(times, dtype="int64")})
    return frame, release


def _read_metadata(path: Path, skips: Skips) -> pd.DataFrame:
    """Item rows of a metadata file. The published 2018 files repeat some records verbatim: exact repeats are
    counted as skips; two different records under one id are an error."""
    rows: list[dict[str, Any]] = []
    release = ""
    for line, record in read_json_lines(path):
        release = release or _release(record, META_MARKERS, path, line)
        item_key, description_key, features_key = META_KEYS[release]
        require_keys(record, [item_key], path, line)
        text = " ".join(_strings(record.get(description_key)) + _strings(record.get(features_key)))
        rows.append({"source_id": str(record[item_key]), "title": " ".join(_strings(record.get("title"))),
                     "text": " ".join(text.split())})
    if not release:
        raise DataError(f"{path}: no items in the metadata file")
    items = pd.DataFrame(rows)
    repeats = items.duplicated()
    skips.add("duplicate_metadata_records", items.loc[repeats, "source_id"])
    items = items[~repeats].reset_index(drop=True)
    check_unique(items["source_id"], path)
    return items


def _strings(value: Any) -> list[str]:
    """A metadata field as a list of strings: fields are a string, a list of strings, or absent."""
    if value is None:
        return []
    if isinstance(value, list):
        return [str(v) for v in value if v is not None and str(v).strip()]
    return [str(value)] if str(value).strip() else []
