"""The ``data`` stage: build a dataset directory from a config, and summarise one.

``prepare_dataset`` is the only entry point later stages and the CLI need: load (import or generate) ->
:func:`rmm.data.preprocess.preprocess` -> images -> :func:`rmm.data.schema.write_dataset`. Ready-made features
a source ships (MMRec) come back in the new item order, for the data stage (:func:`rmm.stages.run_data`) to put
in the feature store: rmm.data sits below rmm.features and does not import it.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from rmm.config import Config, DatasetConfig
from rmm.data import synthetic
from rmm.data.importers import IMAGES_DIR, amazon, mmrec, movielens, place_images
from rmm.data.preprocess import COLD_INFO, ImportedFeature, RawData, Skips, preprocess
from rmm.data.schema import ITEMS_FILE, TEST, TRAIN, VALID, dataset_fingerprint, load_dataset, write_dataset

#: source name -> importer (``synthetic`` is generated, see :func:`load_raw`).
IMPORTERS: dict[str, Callable[[DatasetConfig, Skips], RawData]] = {
    "mmrec": mmrec.load, "amazon": amazon.load, "movielens": movielens.load,
}


def load_raw(cfg: DatasetConfig, skips: Skips) -> RawData:
    """Raw frames of the source ``cfg.source`` names."""
    if cfg.source == "synthetic":
        return synthetic.generate(cfg)
    return IMPORTERS[cfg.source](cfg, skips)


@dataclasses.dataclass(frozen=True)
class PreparedDataset:
    """A dataset directory just written, and the features its source ships.

    Attributes:
        root: the dataset directory.
        features: feature-store name -> the feature as the source ships it (row = the source's row).
        item_rows: for each new ``item_id``, its row in the source's features.
        items_sha256: sha256 of ``items.parquet``, which ties a feature to these items in its manifest.
    """

    root: Path
    features: Mapping[str, ImportedFeature]
    item_rows: np.ndarray
    items_sha256: str

    def imported_features(self) -> Iterator[tuple[str, np.ndarray, dict[str, Any]]]:
        """``(name, matrix with row = item_id, manifest)`` of each shipped feature, re-ordered one at a time (a
        feature matrix can be large)."""
        for name, feature in self.features.items():
            yield name, feature.matrix[self.item_rows], {"kind": "imported", "source": str(feature.source),
                                                         "items_sha256": self.items_sha256}


def prepare_dataset(cfg: Config) -> PreparedDataset:
    """Build the dataset ``cfg.dataset`` describes into ``cfg.dataset_dir``.

    The directory's ``images/`` is rebuilt from scratch, so a re-run with other settings leaves no stale
    image behind.

    Raises:
        DataError: bad input (the message names the file and the field or item).
        ConfigError: a setting the source cannot honour (e.g. ``split: predefined`` without a shipped split).
    """
    dcfg = cfg.dataset
    root = cfg.dataset_dir
    skips = Skips()
    raw = load_raw(dcfg, skips)
    prepared = preprocess(raw, dcfg, skips)
    if (root / IMAGES_DIR).exists():
        shutil.rmtree(root / IMAGES_DIR)
    if dcfg.source == "synthetic":
        items = synthetic.draw_images(prepared.items, root, dcfg.synthetic.image_size, dcfg.seed)
    else:
        items = place_images(prepared.items, root, skips)
    info: dict[str, Any] = {
        "name": dcfg.name,
        "source": dcfg.source,
        "source_files": dict(raw.source_files),
        "timestamp_unit": raw.timestamp_unit,
        **prepared.info,
        "on_unknown_item": dcfg.on_unknown_item,
        "skipped": skips.to_dict(),
        "features": sorted(raw.features),
    }
    if dcfg.source == "synthetic":
        info["synthetic"] = {**dataclasses.asdict(dcfg.synthetic), "affinity_weight": synthetic.AFFINITY_WEIGHT,
                             "image_attributes": list(synthetic.IMAGE_ATTRIBUTES),
                             "text_attributes": list(synthetic.TEXT_ATTRIBUTES)}
    root = write_dataset(root, items, prepared.interactions, prepared.users, info)
    return PreparedDataset(root=root, features=raw.features, item_rows=prepared.item_rows,
                           items_sha256=dataset_fingerprint(root)[ITEMS_FILE])


def dataset_stats(path: str | Path) -> dict[str, Any]:
    """Size, sparsity and content coverage of a prepared dataset (what ``rmm data stats`` prints).

    ``items_with_image`` counts image files that exist; ``items_with_text`` non-blank texts (both shares);
    ``cold_items`` the items held out of training (``dataset.cold_items``).
    """
    dataset = load_dataset(path)
    inter = dataset.interactions
    per_user = np.bincount(inter["user_id"], minlength=dataset.num_users)
    per_item = np.bincount(inter["item_id"], minlength=dataset.num_items)
    image_paths = dataset.items["image_path"].dropna()
    with_image = sum((dataset.root / p).is_file() for p in image_paths)
    with_text = int(dataset.items["text"].fillna("").str.strip().ne("").sum())
    cells = dataset.num_users * dataset.num_items
    return {
        "name": dataset.info.get("name"),
        "source": dataset.info.get("source"),
        "users": dataset.num_users,
        "items": dataset.num_items,
        "interactions": len(inter),
        "splits": {name: int((inter["split"] == code).sum())
                   for name, code in (("train", TRAIN), ("valid", VALID), ("test", TEST))},
        "density": len(inter) / cells if cells else 0.0,
        "interactions_per_user": _spread(per_user),
        "interactions_per_item": _spread(per_item),
        "items_with_image": with_image / max(dataset.num_items, 1),
        "items_with_text": with_text / max(dataset.num_items, 1),
        "cold_items": int((dataset.info.get(COLD_INFO) or {}).get("count", 0)),
    }


def _spread(counts: np.ndarray) -> dict[str, float]:
    return {"min": int(counts.min()), "median": float(np.median(counts)), "max": int(counts.max())}
