"""MMRec-format datasets (Baby, Sports, Clothing, Elec...): ``<name>.inter`` plus ready item features.

MMRec ships interactions already filtered and split (``x_label`` 0/1/2) and item features as ``.npy`` with
row = itemID, but no raw text or images. The features are imported into the feature store (re-ordered to the
new dense ids) so models can train on exactly the features MMRec's papers report.

A feature row holding a NaN or an infinity is treated as extraction treats an encoder's non-finite output: the
item keeps its interactions, its vector is stored as a zero row listed as ``failed`` in the feature's manifest
(:func:`rmm.features.store.write_feature`), and the rows are counted in ``dataset.json`` under
``skipped: non_finite_rows_in_<file>`` with their itemIDs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rmm.config import DatasetConfig
from rmm.data.importers import drop_unknown_items, int_column, raw_path, read_csv, require_columns
from rmm.data.preprocess import ImportedFeature, RawData, Skips
from rmm.data.schema import TEST, TRAIN, nonfinite_rows
from rmm.errors import DataError

#: Feature-store name -> file in the MMRec dataset folder.
FEATURE_FILES = {"mmrec_image": "image_feat.npy", "mmrec_text": "text_feat.npy"}


def load(cfg: DatasetConfig, skips: Skips) -> RawData:
    """Read ``<path>/<name>.inter`` (TSV: userID itemID rating timestamp x_label) and the optional features.

    Items are the feature rows when features exist (row = itemID), else the items of the interactions.
    Titles are the source ids and texts are empty: MMRec publishes no raw text.
    """
    folder = raw_path(cfg)
    inter_path = folder / f"{cfg.name}.inter"
    raw = read_csv(inter_path, "MMRec interactions (<dataset.name>.inter)", sep="\t")
    columns = ["userID", "itemID", "timestamp"] + (["x_label"] if cfg.split == "predefined" else [])
    require_columns(raw, columns, inter_path)
    item_numbers = int_column(raw, "itemID", inter_path)
    interactions = pd.DataFrame({
        "user": int_column(raw, "userID", inter_path).astype(str),
        "item": item_numbers.astype(str),
        "timestamp": int_column(raw, "timestamp", inter_path),
    })
    if cfg.split == "predefined":
        labels = int_column(raw, "x_label", inter_path)
        bad = np.flatnonzero((labels < TRAIN) | (labels > TEST))
        if len(bad):
            raise DataError(f"{inter_path}: line {bad[0] + 2}: x_label {labels[bad[0]]} is not 0, 1 or 2")
        interactions["split"] = labels.astype(np.int8)

    features = _read_features(folder, skips)
    files = {"interactions": str(inter_path)}
    if features:
        num_rows = len(next(iter(features.values())).matrix)
        ids = pd.Series(np.arange(num_rows).astype(str))
        first_file = next(iter(features.values())).source
        interactions = drop_unknown_items(interactions, ids, cfg, inter_path, first_file, skips)
        files.update({name: str(f.source) for name, f in features.items()})
    else:
        ids = pd.Series(np.unique(item_numbers).astype(str))
    items = pd.DataFrame({"source_id": ids, "title": ids, "text": "", "image_source": None})
    return RawData(items=items, interactions=interactions, source_files=files, features=features)


def _read_features(folder: Path, skips: Skips) -> dict[str, ImportedFeature]:
    """The feature files present in ``folder``; rows with a NaN or an infinity are recorded in ``skips`` (the
    store zeroes them when writing)."""
    features = {}
    for name, file in FEATURE_FILES.items():
        path = folder / file
        if not path.is_file():
            continue
        try:
            matrix = np.load(path)
        except (OSError, ValueError) as err:
            raise DataError(f"{path}: not a readable .npy matrix ({err})") from err
        if matrix.ndim != 2:
            raise DataError(f"{path}: expected a 2-D [items, dim] matrix, got shape {matrix.shape}")
        if not np.issubdtype(matrix.dtype, np.number):
            raise DataError(f"{path}: expected a numeric matrix, got dtype {matrix.dtype}")
        skips.add(f"non_finite_rows_in_{file}", nonfinite_rows(matrix))  # row = itemID
        features[name] = ImportedFeature(matrix=matrix, source=path)
    rows = {f.source.name: len(f.matrix) for f in features.values()}
    if len(set(rows.values())) > 1:
        raise DataError(f"{folder}: feature files disagree on the number of items (rows): {rows}")
    return features
