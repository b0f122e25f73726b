"""Importers of public datasets, and the checks they share.

Each importer module exposes ``load(cfg: DatasetConfig, skips: Skips) -> RawData``. The helpers here turn
bad input into a :class:`~rmm.data.schema.DataError` naming the file and the field or item (or into a
counted skip where the config asks for one), so every source fails the same readable way.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from rmm.config import DatasetConfig
from rmm.data.preprocess import Skips
from rmm.errors import ConfigError, DataError

IMAGES_DIR = "images"
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def raw_path(cfg: DatasetConfig) -> Path:
    """``dataset.path``, the raw input every importer reads. DatasetConfig already requires it for these
    sources; the check here is for a config built without that validation."""
    if not cfg.path:
        raise ConfigError(f"source {cfg.source!r} needs dataset.path (the raw input)")
    return Path(cfg.path)


def existing_file(path: Path, what: str) -> Path:
    """``path`` if it is a file, else a DataError saying which input (``what``) is missing."""
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    return path


def read_csv(path: Path, what: str, **kwargs: Any) -> pd.DataFrame:
    """``pandas.read_csv`` of every field as text (parsed later with line-numbered errors); a missing,
    empty or malformed file raises a DataError naming it."""
    existing_file(path, what)
    try:
        return pd.read_csv(path, dtype=str, keep_default_na=False, **kwargs)
    except pd.errors.EmptyDataError as err:
        raise DataError(f"{path}: {what} is empty") from err
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: {what} is malformed: {err}") from err


def require_columns(frame: pd.DataFrame, columns: Sequence[str], path: Path) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(frame.columns)}")


def int_column(frame: pd.DataFrame, column: str, path: Path, first_line: int = 2) -> np.ndarray:
    """``frame[column]`` as int64; a non-integer value raises naming the file, line and column.

    ``first_line`` is the file line of the frame's first row (2 below a header line).
    """
    values = pd.to_numeric(frame[column], errors="coerce")
    bad = np.flatnonzero((values.isna() | (values != np.floor(values))).to_numpy())
    if len(bad):
        row = int(bad[0])
        raise DataError(f"{path}: line {row + first_line}: {column} {frame[column].iloc[row]!r} is not an "
                        f"integer ({len(bad)} such rows)")
    return values.to_numpy().astype(np.int64)


def check_unique(ids: pd.Series, path: Path, what: str = "item") -> None:
    """Raise naming the first repeated id: a repeated item would get two rows (two texts, two images)."""
    repeated = ids[ids.duplicated()]
    if len(repeated):
        raise DataError(f"{path}: {what} {repeated.iloc[0]!r} appears more than once ({len(repeated)} repeated "
                        f"rows); {what} ids must be unique")


def read_json_lines(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (line number, record) of a JSON-lines file, plain or gzip (detected by its magic bytes)."""
    existing_file(path, "JSON-lines file")
    with open(path, "rb") as handle:
        gzipped = handle.read(2) == b"\x1f\x8b"
    number = 0
    try:
        with (gzip.open(path, "rt", encoding="utf-8") if gzipped else open(path, encoding="utf-8")) as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}: line {number} is not valid JSON ({err.msg})") from err
                if not isinstance(record, dict):
                    raise DataError(f"{path}: line {number} is not a JSON object")
                yield number, record
    except (OSError, EOFError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: unreadable after line {number}: {err}") from err


def require_keys(record: dict[str, Any], keys: Sequence[str], path: Path, line: int) -> None:
    missing = [k for k in keys if record.get(k) is None]
    if missing:
        raise DataError(f"{path}: line {line}: missing key(s) {missing}; found {sorted(record)}")


def drop_unknown_items(interactions: pd.DataFrame, known: pd.Series, cfg: DatasetConfig, inter_path: Path,
                       item_path: Path, skips: Skips) -> pd.DataFrame:
    """Rows of ``interactions`` whose ``item`` is in ``known``; the others raise, or are counted and
    dropped under ``dataset.on_unknown_item: skip``."""
    unknown = ~interactions["item"].isin(known)
    if not unknown.any():
        skips.add("unknown_items", [])
        return interactions
    first = interactions.loc[unknown, "item"].iloc[0]
    if cfg.on_unknown_item == "error":
        raise DataError(f"{inter_path}: item {first!r} in interactions is not in {item_path} "
                        f"({int(unknown.sum())} rows); set dataset.on_unknown_item: skip to drop them")
    skips.add("unknown_items", interactions.loc[unknown, "item"].unique(), count=int(unknown.sum()))
    return interactions[~unknown].reset_index(drop=True)


def index_images(images_dir: str | None) -> dict[str, Path]:
    """Map file stem -> image file of ``images_dir`` (one listing instead of a stat per item); the first
    of .jpg, .jpeg, .png wins when a stem has several."""
    if images_dir is None:
        return {}
    folder = Path(images_dir)
    if not folder.is_dir():
        raise DataError(f"{folder}: dataset.images_dir is not a directory")
    images = [p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()]
    found: dict[str, Path] = {}
    for path in sorted(images, key=lambda p: (IMAGE_SUFFIXES.index(p.suffix.lower()), p.name)):
        found.setdefault(path.stem, path)
    return found


def place_images(items: pd.DataFrame, root: Path, skips: Skips) -> pd.DataFrame:
    """Verify each item's ``image_source`` with Pillow and copy it to ``<root>/images/``.

    Returns ``items`` with ``image_path`` (relative to ``root``, None when there is no readable image)
    instead of ``image_source``; unreadable images are counted as ``unreadable_images``.
    """
    target = root / IMAGES_DIR
    target.mkdir(parents=True, exist_ok=True)
    paths: list[str | None] = []
    unreadable: list[str] = []
    rows = zip(items["item_id"], items["source_id"], items["image_source"], strict=True)
    for item_id, source_id, source in tqdm(rows, total=len(items), desc="images", disable=None):
        if pd.isna(source):
            paths.append(None)
            continue
        try:
            with Image.open(source) as image:
                image.load()
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
            unreadable.append(source_id)
            paths.append(None)
            continue
        name = _UNSAFE.sub("_", source_id)
        name = name if name == source_id else f"{name}-{item_id}"
        destination = target / f"{name}{Path(source).suffix.lower()}"
        shutil.copyfile(source, destination)
        paths.append(destination.relative_to(root).as_posix())
    skips.add("unreadable_images", unreadable)
    return items.drop(columns="image_source").assign(image_path=pd.Series(paths, dtype="str"))
