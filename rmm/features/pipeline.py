"""Feature extraction as a Ray Data graph (the only module of ``rmm.features`` that imports Ray).

Per configured extractor: items -> image decoding in CPU tasks (image extractors only) -> the extractor in an
actor pool (model loaded once per actor) -> ``part-*.parquet`` written by Ray Data -> ``matrix.npy`` +
``manifest.json`` consolidated on the driver. A feature whose manifest records the same extractor config and
the same items file is complete and skipped, so a rerun costs nothing and a changed config re-extracts.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import ray
from ray.data.datasource import FilenameProvider

from rmm.cluster import init_ray
from rmm.config import Config, ExtractorConfig, save_snapshot
from rmm.data.schema import ITEMS_FILE, Dataset, load_dataset, sha256_file
from rmm.features.extractors import Extractor, decode_images, get_extractor
from rmm.features.store import MANIFEST_FILE, clear_feature, consolidate_parts, feature_dir, read_manifest
from rmm.features.tiny import cache_root

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["item_id", "title", "text", "image_path"]
# How an extractor runs, not what it computes: changing these must not invalidate a finished feature.
RUNTIME_FIELDS = ("batch_size", "concurrency", "num_cpus", "num_gpus")
# Rows per input block: enough blocks for image decoding to stream ahead of the actors, few enough that
# per-task overhead stays small.
_MIN_ROWS_PER_BLOCK = 64


class _PartFiles(FilenameProvider):
    """Names Ray Data's output files ``part-<task>-<write uuid>.parquet`` (the feature-store contract)."""

    def get_filename_for_task(self, write_uuid: str, task_index: int) -> str:
        return f"part-{task_index:06d}-{write_uuid}.parquet"


def extract_features(cfg: Config) -> dict[str, Path]:
    """Extract every feature in ``cfg.features.extractors`` into ``cfg.feature_root``.

    All extractor configs are checked (kind, pooling, prompt, model) before any work starts, so a typo in the
    last one does not surface after hours of the first.

    Returns:
        feature name -> its directory in the store.

    Raises:
        KeyError: an unknown extractor kind or prompt template.
        ValueError: an invalid pooling or a missing model.
        rmm.data.schema.DataError: the dataset directory breaks the contract.
    """
    dataset = load_dataset(cfg.dataset_dir)
    if dataset.num_items == 0:
        raise ValueError(f"{dataset.root} has no items to extract features from; check `rmm data prepare`")
    cache_dir = str(cache_root())
    plans = [(extractor, get_extractor(extractor.kind)) for extractor in cfg.features.extractors]
    described = {extractor.name: cls.describe(extractor, cache_dir) for extractor, cls in plans}
    init_ray(cfg.ray)
    save_snapshot(cfg, cfg.feature_root)
    items_sha256 = dataset.info.get("sha256", {}).get(ITEMS_FILE) or sha256_file(dataset.root / ITEMS_FILE)
    paths = {}
    for extractor, cls in plans:
        fingerprint = feature_fingerprint(extractor, items_sha256)
        manifest = {"kind": extractor.kind, **described[extractor.name], "config": asdict(extractor),
                    "dataset": str(dataset.root), "items_sha256": items_sha256, "fingerprint": fingerprint}
        paths[extractor.name] = _extract_one(cfg.feature_root, dataset, extractor, cls, manifest, cache_dir)
    return paths


def feature_fingerprint(extractor: ExtractorConfig, items_sha256: str) -> str:
    """sha256 of what determines a feature's values: its config (less runtime fields) and the items file."""
    what = {k: v for k, v in asdict(extractor).items() if k not in RUNTIME_FIELDS}
    return hashlib.sha256(json.dumps({"extractor": what, "items": items_sha256}, sort_keys=True).encode()).hexdigest()


def is_complete(feature_root: Path, name: str, fingerprint: str) -> bool:
    """Whether the store holds ``name`` extracted with this fingerprint."""
    if not (feature_dir(feature_root, name) / MANIFEST_FILE).exists():
        return False
    return read_manifest(feature_root, name).get("fingerprint") == fingerprint


def _extract_one(feature_root: Path, dataset: Dataset, extractor: ExtractorConfig, cls: type[Extractor],
                 manifest: dict[str, Any], cache_dir: str) -> Path:
    target = feature_dir(feature_root, extractor.name)
    if is_complete(feature_root, extractor.name, manifest["fingerprint"]):
        log.info("feature %s is complete in %s; skipping", extractor.name, target)
        return target
    if (target / MANIFEST_FILE).exists():
        log.warning("feature %s was extracted from another config or items file; re-extracting", extractor.name)
    clear_feature(feature_root, extractor.name)
    items = dataset.items[ITEM_COLUMNS if cls.needs_image else [c for c in ITEM_COLUMNS if c != "image_path"]]
    rows = max(extractor.batch_size, _MIN_ROWS_PER_BLOCK)
    # Split here: from_pandas(override_num_blocks=...) breaks on numpy 2.4 (np.array_split returns arrays).
    ds = ray.data.from_pandas([items.iloc[start:start + rows] for start in range(0, len(items), rows)])
    if cls.needs_image:
        ds = ds.map_batches(decode_images, batch_size=extractor.batch_size,
                            fn_kwargs={"dataset_dir": str(dataset.root.resolve()),
                                       "max_image_size": extractor.max_image_size})
    ds = ds.map_batches(cls, fn_constructor_kwargs={"cfg": extractor, "cache_dir": cache_dir},
                        batch_size=extractor.batch_size,
                        compute=ray.data.ActorPoolStrategy(size=extractor.concurrency),
                        num_cpus=extractor.num_cpus, num_gpus=extractor.num_gpus)
    ds = ds.map_batches(_vectors_as_lists, batch_size=None)
    log.info("extracting %s (%s) for %d items into %s", extractor.name, extractor.kind, len(items), target)
    ds.write_parquet(str(target.resolve()), filename_provider=_PartFiles())
    path = consolidate_parts(feature_root, extractor.name, len(items), manifest)
    counts = read_manifest(feature_root, extractor.name)["counts"]
    log.info("feature %s: %s -> %s", extractor.name, counts, path)
    return path


def _vectors_as_lists(batch: dict[str, np.ndarray]) -> pa.Table:
    """Store ``vector`` as ``list<float32>`` (the contract), not Ray's tensor extension type."""
    vectors = np.asarray(batch["vector"], dtype=np.float32)
    lists = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    return pa.table({"item_id": pa.array(batch["item_id"], pa.int64()),
                     "vector": lists.cast(pa.list_(pa.float32())),
                     "status": pa.array(batch["status"], pa.string()),
                     "reason": pa.array(batch["reason"], pa.string())})
