"""Feature store read/write: ``<out>/features/<dataset>/<feature_name>/`` (the feature-store contract).

A feature is complete once ``matrix.npy`` (float32 ``[num_items, dim]``, row = item_id) and ``manifest.json``
exist; rows of items that could not be represented are zero and listed in the manifest (``missing``: the item
lacks the input; ``failed``: encoding raised). Ray Data writes ``part-*.parquet`` rows first;
:func:`consolidate_parts` turns them into the matrix.

Resume: while a feature is being extracted its directory holds ``progress.json`` (the fingerprint of the config
writing it). A rerun with the same fingerprint keeps the parts and extracts only the items none of them holds
(:func:`written_ids`). Parts are written whole (temp file + rename) and the parts of one batch share a name
across the features of one extractor, so a batch interrupted between two features is detected and dropped
(:func:`prune_incomplete_parts`): a killed run loses at most its in-flight batches and never duplicates a row.
"""

from __future__ import annotations

import json
import logging
import platform
import posixpath
import time
import uuid
from collections.abc import Iterable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from rmm.data.schema import DATASET_FILES, nonfinite_rows, sha256_file
from rmm.errors import DataError, NotFoundError
from rmm.storage import filesystem

log = logging.getLogger(__name__)

MATRIX_FILE = "matrix.npy"
MANIFEST_FILE = "manifest.json"
#: What a reader of a complete feature needs (parts and descriptions stay behind).
FEATURE_FILES = (MATRIX_FILE, MANIFEST_FILE)
PROGRESS_FILE = "progress.json"
DESCRIPTIONS_FILE = "descriptions.parquet"
PART_GLOB = "part-*.parquet"
#: Manifest ``failed`` reason of a row :func:`write_feature` zeroed because it held a NaN or an infinity.
NONFINITE_REASON = "NaN or infinite value (as float32); stored as a zero row"
_VERSIONED = ("torch", "torchvision", "transformers", "tokenizers", "ray", "sentence-transformers", "numpy",
              "pyarrow", "pillow")


class FeatureNotFoundError(NotFoundError):
    """A feature a model or config names is not in the store."""


def library_versions() -> dict[str, str]:
    """Versions of the libraries that shape a feature or a run, for manifests and run records."""
    versions = {"python": platform.python_version()}
    for name in _VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def feature_dir(feature_root: str | Path, name: str) -> Path:
    return Path(feature_root) / name


def _zero_nonfinite_rows(name: str, matrix: np.ndarray, missing: Mapping[int, str] | None,
                         failed: Mapping[int, str] | None) -> tuple[np.ndarray, dict[int, str]]:
    """``matrix`` with its :func:`nonfinite_rows` zeroed (in a copy), and ``failed`` with those rows added: what
    extraction does with an encoder's non-finite output, so a stored matrix is always finite."""
    failed = dict(failed or {})
    bad = nonfinite_rows(matrix)
    if not len(bad):
        return matrix, failed
    matrix = matrix.copy()
    matrix[bad] = 0.0
    for item_id in bad.tolist():
        if item_id not in (missing or {}):
            failed.setdefault(item_id, NONFINITE_REASON)
    log.warning("feature %r: %d rows with NaN or infinite values (item ids %s%s) are stored as zero rows and "
                "listed as failed in its manifest; fix the source (re-extract, or correct the imported file) to use "
                "them", name, len(bad), bad[:5].tolist(), "..." if len(bad) > 5 else "")
    return matrix, failed


def write_feature(feature_root: str | Path, name: str, matrix: np.ndarray, manifest: Mapping[str, Any],
                  missing: Mapping[int, str] | None = None, failed: Mapping[int, str] | None = None) -> Path:
    """Write a complete feature: ``matrix.npy`` then ``manifest.json`` (written last, so its presence
    means the matrix is whole). ``missing`` maps item_id -> reason for zero rows of items lacking the input;
    ``failed`` maps item_id -> error for zero rows of items whose encoding raised. A row with a NaN or an
    infinity is zeroed and added to ``failed`` (:func:`nonfinite_rows`), as extraction does."""
    if not manifest.get("items_sha256"):
        raise ValueError(f"feature {name!r}: the manifest must record items_sha256, the items it was made from")
    with np.errstate(over="ignore"):  # a float64 value beyond float32 becomes inf, then a failed row
        matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"feature {name!r} must be a 2-D [num_items, dim] matrix, got shape {matrix.shape}")
    matrix, failed = _zero_nonfinite_rows(name, matrix, missing, failed)
    target = feature_dir(feature_root, name)
    target.mkdir(parents=True, exist_ok=True)
    np.save(target / MATRIX_FILE, matrix)
    missing = dict(missing or {})
    full = {
        "name": name,
        **manifest,
        "num_items": int(matrix.shape[0]),
        "dim": int(matrix.shape[1]),
        "dtype": "float32",
        "matrix_sha256": sha256_file(target / MATRIX_FILE),
        "counts": {"done": int(matrix.shape[0] - len(missing) - len(failed)), "missing": len(missing),
                   "failed": len(failed), **dict(manifest.get("counts", {}))},
        "missing": {str(k): v for k, v in sorted(missing.items())},
        "failed": {str(k): v for k, v in sorted(failed.items())},
        "library_versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (target / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=False))
    return target


def clear_feature(feature_root: str | Path, name: str) -> None:
    """Delete a feature's files, manifest first, so an interrupted rewrite never looks complete."""
    target = feature_dir(feature_root, name)
    for path in [target / MANIFEST_FILE, target / PROGRESS_FILE, target / MATRIX_FILE, target / DESCRIPTIONS_FILE,
                 *sorted(target.glob(PART_GLOB)), *sorted(target.glob(".part-*"))]:
        path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------- parts, resume

def write_part_group(feature_root: str | Path, tables: Mapping[str, pa.Table]) -> str:
    """Write one batch's rows of several features as ``<feature>/part-<id>.parquet`` with one shared ``<id>``.

    ``feature_root`` may be a URI (:mod:`rmm.storage`), so a task on any node writes where the driver reads.
    Each file is written to a hidden temp name and moved into place (a reader never sees half a file);
    all temp files are written before the first move, so an interruption leaves either no part of the batch
    or an incomplete group that :func:`prune_incomplete_parts` removes.

    Returns:
        the part id.
    """
    part_id = uuid.uuid4().hex
    fs, root = filesystem(str(feature_root))
    staged = []
    for name, table in tables.items():
        target = posixpath.join(root, name)
        fs.create_dir(target, recursive=True)
        temp = posixpath.join(target, f".part-{part_id}.parquet.tmp")
        pq.write_table(table, temp, filesystem=fs)
        staged.append((temp, posixpath.join(target, f"part-{part_id}.parquet")))
    for temp, final in staged:
        fs.move(temp, final)
    return part_id


def prune_incomplete_parts(feature_root: str | Path, names: list[str] | tuple[str, ...]) -> int:
    """Delete temp files and the parts whose id is not present in every feature of ``names`` (the outputs of one
    extractor, always written together). Returns how many part files were removed."""
    ids = {name: {p.name for p in feature_dir(feature_root, name).glob(PART_GLOB)} for name in names}
    complete = set.intersection(*ids.values()) if ids else set()
    removed = 0
    for name in names:
        target = feature_dir(feature_root, name)
        for temp in target.glob(".part-*"):
            temp.unlink()
        for part in sorted(ids[name] - complete):
            (target / part).unlink()
            removed += 1
    return removed


def read_parts(feature_root: str | Path, name: str, columns: list[str] | None = None) -> pd.DataFrame:
    """All part rows of a feature (``columns`` only), as a DataFrame; empty when there are no parts."""
    parts = sorted(feature_dir(feature_root, name).glob(PART_GLOB))
    if not parts:
        return pd.DataFrame({column: [] for column in (columns or ["item_id"])})
    return pa.concat_tables([pq.read_table(part, columns=columns) for part in parts]).to_pandas()


def written_ids(feature_root: str | Path, name: str) -> np.ndarray:
    """Sorted item ids with a row in the feature's parts (done, missing or failed: all are written)."""
    return np.unique(read_parts(feature_root, name, ["item_id"])["item_id"].to_numpy(dtype=np.int64))


def read_progress(feature_root: str | Path, name: str) -> str | None:
    """The fingerprint an unfinished extraction of ``name`` recorded, or None."""
    path = feature_dir(feature_root, name) / PROGRESS_FILE
    return json.loads(path.read_text()).get("fingerprint") if path.exists() else None


def write_progress(feature_root: str | Path, name: str, fingerprint: str) -> None:
    target = feature_dir(feature_root, name)
    target.mkdir(parents=True, exist_ok=True)
    (target / PROGRESS_FILE).write_text(json.dumps({"fingerprint": fingerprint}))


def consolidate_parts(feature_root: str | Path, name: str, num_items: int, manifest: Mapping[str, Any]) -> Path:
    """Turn the ``part-*.parquet`` rows of a feature into ``matrix.npy`` + ``manifest.json``.

    Rows carry ``item_id``, ``vector`` and, when written by an extractor, ``status`` (done/missing/failed) and
    ``reason``. Items with no row are missing ("not extracted"); reasons on ``done`` rows (partial inputs)
    go to the manifest's ``notes``.

    Raises:
        FeatureNotFoundError: there are no parts.
        DataError: an item id outside ``0..num_items-1``, a repeated id, or vectors of unequal length.
    """
    target = feature_dir(feature_root, name)
    parts = sorted(target.glob(PART_GLOB))
    if not parts:
        raise FeatureNotFoundError(f"feature {name!r}: no {PART_GLOB} files in {target} to consolidate")
    table = pa.concat_tables([pq.read_table(part) for part in parts])
    ids = table["item_id"].to_numpy()
    vectors = table["vector"].combine_chunks()
    lengths = set(pc.list_value_length(vectors).to_pylist())
    if len(lengths) > 1:
        raise DataError(f"feature {name!r}: vectors of different lengths {sorted(lengths)} in {target}")
    bad = ids[(ids < 0) | (ids >= num_items)]
    if len(bad):
        raise DataError(f"feature {name!r}: item_id {int(bad[0])} is outside 0..{num_items - 1}")
    if len(np.unique(ids)) != len(ids):
        raise DataError(f"feature {name!r}: repeated item ids in {target}; delete the parts and re-extract")
    dim = lengths.pop() if lengths else 0
    matrix = np.zeros((num_items, dim), dtype=np.float32)
    matrix[ids] = vectors.flatten().to_numpy().reshape(len(ids), dim)
    size = len(ids)
    status = table["status"].to_pylist() if "status" in table.column_names else ["done"] * size
    reasons = table["reason"].to_pylist() if "reason" in table.column_names else [""] * size
    missing = {i: "not extracted" for i in sorted(set(range(num_items)) - set(ids.tolist()))}
    failed: dict[int, str] = {}
    notes: dict[int, str] = {}
    for item_id, state, reason in zip(ids.tolist(), status, reasons, strict=True):
        if state == "missing":
            missing[item_id] = reason
        elif state == "failed":
            failed[item_id] = reason
        elif reason:
            notes[item_id] = reason
    matrix[list(missing) + list(failed)] = 0.0  # zero rows whatever wrote the parts
    notes_json = {str(k): v for k, v in sorted(notes.items())}
    return write_feature(feature_root, name, matrix, {**manifest, "notes": notes_json},
                         missing=missing, failed=failed)


def model_input_files(dataset_dir: str, feature_root: str, names: Iterable[str]) -> list[str]:
    """Paths (under the same root as ``dataset_dir`` and ``feature_root``) of what loading the dataset and the
    complete features ``names`` reads: the dataset's tables (no images) and each feature's matrix and manifest
    (no parts). What a process on another node pulls before training or serving a model."""
    return [*(f"{dataset_dir}/{file}" for file in DATASET_FILES),
            *(f"{feature_root}/{name}/{file}" for name in names for file in FEATURE_FILES)]


def read_manifest(feature_root: str | Path, name: str) -> dict[str, Any]:
    path = feature_dir(feature_root, name) / MANIFEST_FILE
    if not path.exists():
        raise FeatureNotFoundError(f"feature {name!r} not found in {feature_root} (no {path.name}); "
                                   f"available: {list_features(feature_root)}; run `rmm extract` first")
    return json.loads(path.read_text())


def matrix_fingerprint(feature_root: str | Path, name: str) -> str:
    """sha256 of a complete feature's ``matrix.npy``: recorded in its manifest when written (hashed now for a
    store written before manifests recorded it)."""
    return read_manifest(feature_root, name).get("matrix_sha256") or sha256_file(
        feature_dir(feature_root, name) / MATRIX_FILE)


def check_lineage(feature_root: str | Path, name: str, items_sha256: str, dataset: str | Path) -> None:
    """Raise DataError unless feature ``name`` was made from the items file whose sha256 is ``items_sha256``
    (the dataset's ``items.parquet``): features of another dataset, or of an earlier preparation of this one,
    would give every row to the wrong item."""
    manifest = read_manifest(feature_root, name)
    made_from = manifest.get("items_sha256")
    if made_from == items_sha256:
        return
    fix = ("`rmm data prepare CONFIG` re-imports it" if manifest.get("kind") == "imported"
           else "`rmm extract CONFIG` re-extracts it")
    origin = f"items with sha256 {made_from[:12]}…" if made_from else "items it does not record"
    raise DataError(f"feature {name!r} was made from {origin}, but dataset {dataset} now holds items with sha256 "
                    f"{items_sha256[:12]}… (items.parquet changed since): {fix}")


def load_feature(feature_root: str | Path, name: str) -> np.ndarray:
    """The ``[num_items, dim]`` float32 matrix of a complete feature."""
    read_manifest(feature_root, name)
    return np.load(feature_dir(feature_root, name) / MATRIX_FILE)


def list_features(feature_root: str | Path) -> list[str]:
    root = Path(feature_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).exists())
