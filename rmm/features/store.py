"""Feature store read/write: ``<out>/features/<dataset>/<feature_name>/`` (see DESIGN.md).

A feature is complete once ``matrix.npy`` (float32 ``[num_items, dim]``, row = item_id) and ``manifest.json``
exist; rows of items that could not be represented are zero and listed in the manifest.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

MATRIX_FILE = "matrix.npy"
MANIFEST_FILE = "manifest.json"
_VERSIONED = ("torch", "transformers", "ray", "sentence-transformers", "numpy", "pyarrow", "pillow")


class FeatureNotFoundError(FileNotFoundError):
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


def write_feature(feature_root: str | Path, name: str, matrix: np.ndarray, manifest: Mapping[str, Any],
                  missing: Mapping[int, str] | None = None) -> Path:
    """Write a complete feature: ``matrix.npy`` then ``manifest.json`` (written last, so its presence
    means the matrix is whole). ``missing`` maps item_id -> reason for zero rows."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    if matrix.ndim != 2:
        raise ValueError(f"feature {name!r} must be a 2-D [num_items, dim] matrix, got shape {matrix.shape}")
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
        "counts": {"done": int(matrix.shape[0] - len(missing)), "missing": len(missing),
                   **dict(manifest.get("counts", {}))},
        "missing": {str(k): v for k, v in sorted(missing.items())},
        "library_versions": library_versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    (target / MANIFEST_FILE).write_text(json.dumps(full, indent=2, sort_keys=False))
    return target


def read_manifest(feature_root: str | Path, name: str) -> dict[str, Any]:
    path = feature_dir(feature_root, name) / MANIFEST_FILE
    if not path.exists():
        raise FeatureNotFoundError(f"feature {name!r} not found in {feature_root} (no {path.name}); "
                                   f"available: {list_features(feature_root)}; run `rmm extract` first")
    return json.loads(path.read_text())


def load_feature(feature_root: str | Path, name: str) -> np.ndarray:
    """The ``[num_items, dim]`` float32 matrix of a complete feature."""
    read_manifest(feature_root, name)
    return np.load(feature_dir(feature_root, name) / MATRIX_FILE)


def list_features(feature_root: str | Path) -> list[str]:
    root = Path(feature_root)
    if not root.is_dir():
        return []
    return sorted(p.name for p in root.iterdir() if (p / MANIFEST_FILE).exists())
