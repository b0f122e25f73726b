"""Feature extraction as a Ray Data graph (the only module of ``rmm.features`` that imports Ray).

Extractors run in jobs: each extractor is its own job unless several share a ``group``, in which case one actor
pool hosts them all (one read of the items, one image decode, one load of a model they have in common). Per job:
items still to do -> image decoding in CPU tasks (image extractors only) -> :class:`ExtractorGroup` in an actor
pool -> :class:`FeatureSink` writes each batch's rows into every output feature's ``part-*.parquet`` -> on the
driver, ``matrix.npy`` + ``manifest.json`` per feature (and derived ones such as keywords).

A feature whose manifest records the same extractor config and the same items file is complete and skipped, so
a rerun costs nothing and a changed config re-extracts. An interrupted job resumes: parts written under the same
fingerprint are kept and only the items they lack are extracted (see :mod:`rmm.features.store`).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import ray
from ray.data.block import Block, BlockAccessor
from ray.data.datasource import Datasink

from rmm import console
from rmm.cluster import init_ray
from rmm.config import Config, ExtractorConfig, ImageExtractorConfig, save_snapshot
from rmm.data.schema import ITEMS_FILE, Dataset, load_dataset, sha256_file
from rmm.errors import ConfigError, DataError
from rmm.features.extractors import (
    SKIPPED,
    TODO_PREFIX,
    Extractor,
    ExtractorGroup,
    actor_threads,
    decode_images,
    get_extractor,
)
from rmm.features.store import (
    MANIFEST_FILE,
    PROGRESS_FILE,
    clear_feature,
    feature_dir,
    prune_incomplete_parts,
    read_manifest,
    read_progress,
    write_part_group,
    write_progress,
    written_ids,
)
from rmm.storage import Storage, cache_root

log = logging.getLogger(__name__)

ITEM_COLUMNS = ["item_id", "title", "text", "image_path"]
# How an extractor runs, not what it computes: changing these must not invalidate a finished feature.
RUNTIME_FIELDS = ("batch_size", "bucket_window", "concurrency", "num_cpus", "num_gpus", "group")


@dataclass(frozen=True)
class Plan:
    """One extractor of a job: its config, class, features and the manifest fields common to its features."""

    cfg: ExtractorConfig
    cls: type[Extractor[Any]]
    manifest: dict[str, Any]

    @property
    def outputs(self) -> tuple[str, ...]:
        return self.cls.output_names(self.cfg)

    @property
    def features(self) -> tuple[str, ...]:
        return self.cls.feature_names(self.cfg)

    @property
    def fingerprint(self) -> str:
        return self.manifest["fingerprint"]


def extract_features(cfg: Config) -> dict[str, Path]:
    """Extract every feature of ``cfg.features.extractors`` into ``cfg.feature_root``.

    All extractor configs are checked (kind, pooling, prompt, model, unique feature names) before any work starts,
    so a typo in the last one does not surface after hours of the first.

    Returns:
        feature name -> its directory in the store (every output and derived feature).

    Raises:
        KeyError: an unknown extractor kind or prompt template.
        ValueError: an invalid pooling, a missing model, two extractors writing the same feature.
        rmm.data.schema.DataError: the dataset directory breaks the contract.
    """
    dataset = load_dataset(cfg.dataset_dir)
    if dataset.num_items == 0:
        raise DataError(f"{dataset.root} has no items to extract features from; check `rmm data prepare`")
    cache_dir = str(cache_root())
    items_sha256 = dataset.info.get("sha256", {}).get(ITEMS_FILE) or sha256_file(dataset.root / ITEMS_FILE)
    plans = []
    for extractor in cfg.features.extractors:
        cls = get_extractor(extractor.kind)
        manifest = {"kind": extractor.kind, **cls.describe(extractor, cache_dir), "extractor": extractor.name,
                    "config": asdict(extractor), "dataset": str(dataset.root), "items_sha256": items_sha256,
                    "fingerprint": feature_fingerprint(extractor, items_sha256)}
        plans.append(Plan(extractor, cls, manifest))
    _check_unique_features(plans)
    if any(not is_complete(cfg.feature_root, name, plan.fingerprint) for plan in plans for name in plan.features):
        init_ray(cfg.ray)  # seconds: not needed when every feature is already complete
    save_snapshot(cfg, cfg.feature_root)
    paths: dict[str, Path] = {}
    for job in group_jobs(plans):
        _run_job(cfg.feature_root, dataset, job, cache_dir, cfg.storage)
        paths.update({name: feature_dir(cfg.feature_root, name) for plan in job for name in plan.features})
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


def group_jobs(plans: Sequence[Plan]) -> list[list[Plan]]:
    """Extractors sharing a ``group`` form one job (at the position of the first); the others one job each."""
    jobs: list[list[Plan]] = []
    by_group: dict[str, list[Plan]] = {}
    for plan in plans:
        if plan.cfg.group is None:
            jobs.append([plan])
        elif plan.cfg.group in by_group:
            by_group[plan.cfg.group].append(plan)
        else:
            by_group[plan.cfg.group] = [plan]
            jobs.append(by_group[plan.cfg.group])
    return jobs


def _check_unique_features(plans: Sequence[Plan]) -> None:
    owner: dict[str, str] = {}
    for plan in plans:
        for name in plan.features:
            if name in owner:
                raise ConfigError(f"extractors {owner[name]!r} and {plan.cfg.key!r} both write feature {name!r}; "
                                  "rename one")
            owner[name] = plan.cfg.key


def prepare_resume(feature_root: Path, plan: Plan, num_items: int) -> np.ndarray | None:
    """Get ``plan``'s feature directories ready and return the items it still has to extract.

    Returns:
        None when every feature of the plan is complete (nothing to do); otherwise a bool mask over items, True
        where no part holds the item yet. Parts of another fingerprint (changed config or items) are deleted,
        parts of this one kept.
    """
    if all(is_complete(feature_root, name, plan.fingerprint) for name in plan.features):
        return None
    resumable = all(read_progress(feature_root, name) == plan.fingerprint or is_complete(feature_root, name,
                                                                                         plan.fingerprint)
                    for name in plan.outputs)
    if not resumable:
        if any((feature_dir(feature_root, name) / MANIFEST_FILE).exists() for name in plan.features):
            log.warning("%s was extracted from another config or items file; re-extracting", plan.cfg.name)
        for name in plan.features:
            clear_feature(feature_root, name)
    for name in plan.outputs:
        write_progress(feature_root, name, plan.fingerprint)
    removed = prune_incomplete_parts(feature_root, plan.outputs)
    if removed:
        log.warning("%s: dropped %d part files of a batch interrupted mid-write", plan.cfg.name, removed)
    todo = np.ones(num_items, dtype=bool)
    todo[written_ids(feature_root, plan.outputs[0])] = False
    if resumable and not todo.all():
        log.info("%s: resuming, %d of %d items already written", plan.cfg.name, num_items - todo.sum(), num_items)
    return todo


class FeatureSink(Datasink[int]):
    """Writes each block of :class:`ExtractorGroup` output into the part files of every output feature.

    Args:
        feature_root: the store's root.
        outputs: extractor name -> its output features; the features of one extractor are written as one part
            group (:func:`rmm.features.store.write_part_group`). Rows with status ``skipped`` are not written.
    """

    def __init__(self, feature_root: str, outputs: dict[str, tuple[str, ...]]) -> None:
        self.feature_root = feature_root
        self.outputs = outputs

    def write(self, blocks: Iterable[Block], ctx: Any) -> int:
        written = 0
        for block in blocks:
            table = BlockAccessor.for_block(block).to_arrow()
            for features in self.outputs.values():
                keep = pc.not_equal(table[f"{features[0]}/status"], SKIPPED)
                rows = table.filter(keep)
                if rows.num_rows == 0:
                    continue
                write_part_group(self.feature_root, {name: _feature_table(rows, name) for name in features})
                written += rows.num_rows
            console.emit("items", n=table.num_rows)  # the extract bar on the driver's console
        return written


def _feature_table(rows: pa.Table, name: str) -> pa.Table:
    prefix = f"{name}/"
    columns = {"item_id": rows["item_id"]}
    columns.update({c[len(prefix):]: rows[c] for c in rows.column_names if c.startswith(prefix)})
    return pa.table(columns)


def _run_job(feature_root: Path, dataset: Dataset, job: list[Plan], cache_dir: str, storage: Storage) -> None:
    """Extract one job's pending items, then consolidate every plan's features.

    Where the outputs live at a URI, the tasks read the images and write the parts there (they may run on any
    node): the store's cleaned-up state is pushed first (parts of another fingerprint or of an interrupted
    batch must not come back), and the new parts are pulled before consolidating them here.
    """
    num_items = dataset.num_items
    todo: dict[str, np.ndarray] = {}  # extractor key -> (num_items,) bool: items still to extract
    for plan in job:
        remaining = prepare_resume(feature_root, plan, num_items)
        if remaining is None:
            log.info("%s is complete in %s; skipping", ", ".join(plan.features), feature_root)
        else:
            todo[plan.cfg.key] = remaining
    pending = [plan for plan in job if plan.cfg.key in todo]
    if not pending:
        return
    written = [storage.relative(feature_dir(feature_root, name)) for plan in pending for name in plan.features]
    storage.push(*written, delete=True)
    needs_image = any(plan.cls.needs_image for plan in pending)
    items = dataset.items[ITEM_COLUMNS if needs_image else [c for c in ITEM_COLUMNS if c != "image_path"]]
    items = items.assign(**{TODO_PREFIX + plan.cfg.key: todo[plan.cfg.key] for plan in pending})
    mask = np.logical_or.reduce([todo[plan.cfg.key] for plan in pending])
    items = items[mask]
    if len(items):
        _extract(storage.location_of(feature_root), storage.location_of(dataset.root), items, pending, cache_dir)
        storage.pull(*written)
    for plan in pending:
        plan.cls.finalize(feature_root, plan.cfg, num_items, plan.manifest)
        for name in plan.outputs:
            (feature_dir(feature_root, name) / PROGRESS_FILE).unlink(missing_ok=True)
        for name in plan.features:
            log.info("feature %s: %s -> %s", name, read_manifest(feature_root, name)["counts"],
                     feature_dir(feature_root, name))


def longest_text_first(items: pd.DataFrame) -> np.ndarray:
    """Row positions of ``items`` by decreasing title + text length (ties in input order).

    An extractor sorts only the rows of one Ray batch by input length before cutting model batches; over the
    catalogue's order a batch of a few hundred rows mixes every length, so its model batches pad to the longest
    of a wide spread. Handing the pool the catalogue in this order makes every Ray batch hold texts of similar
    length, so padding is as low as in a loop that sorts all items at once (sentence-transformers' ``encode``
    does). The order of the stored features does not depend on it: parts are keyed by item id.
    """
    lengths = sum(items[column].fillna("").astype(str).str.len().to_numpy() for column in ("title", "text"))
    return np.argsort(-lengths, kind="stable")


def _extract(feature_root: str, dataset_dir: str, items: pd.DataFrame, plans: list[Plan], cache_dir: str) -> None:
    """One Ray Data pass over ``items`` with every plan's extractor in one actor pool; ``feature_root`` and
    ``dataset_dir`` are absolute paths or URIs, which every node reaches.

    A group runs with the largest ``batch_rows``, ``num_cpus``, ``num_gpus`` and ``concurrency`` of its members;
    each actor runs torch on as many threads as the CPUs it reserved. Image decoding and the sink reserve no CPU:
    an actor pool holding every CPU of the node (on a CPU box the fastest way to run a model: one single-thread
    actor per core) would otherwise leave them waiting until the pool is done, so images would never be decoded
    and parts would not be written batch by batch. Both are cheap next to a model (they run between its batches).

    A CPU actor takes one batch at a time. Ray Data's default queues a second task on each actor, whose block is
    fetched and converted in a side thread while the model runs; on a CPU actor that thread competes with the
    model's own torch threads for the cores the actor reserved, which measured slower than the idle gap it
    saves (MiniLM on 2,000 items, 2 cores: the pool's span 9.6-12.5 s at one in flight, 12.3-17.1 s at the
    default). A GPU actor keeps the default, since there the model leaves the cores free for the prefetch.
    """
    cfgs = [plan.cfg for plan in plans]
    batch_rows = max(c.batch_rows for c in cfgs)
    ranges = [c.concurrency if isinstance(c.concurrency, tuple) else (c.concurrency, c.concurrency) for c in cfgs]
    low, high = max(r[0] for r in ranges), max(r[1] for r in ranges)
    items = items.iloc[longest_text_first(items)]
    # One input block per Ray batch: the actor's output of a task is one block, written as one part group as
    # soon as it is done, so a killed run loses at most the batches in flight. from_blocks keeps the blocks as
    # given and reads their row counts and schema here; from_pandas asks a remote task per block, whose worker
    # start delayed the first batch by ~2.5 s.
    blocks = [items.iloc[start:start + batch_rows] for start in range(0, len(items), batch_rows)]
    ds: ray.data.Dataset = ray.data.from_blocks(blocks)
    if any(plan.cls.needs_image for plan in plans):
        max_image_size = max(c.max_image_size for c in cfgs if isinstance(c, ImageExtractorConfig))
        ds = ds.map_batches(partial(decode_images, dataset_dir=dataset_dir, max_image_size=max_image_size),
                            batch_size=batch_rows, num_cpus=0, compute=ray.data.TaskPoolStrategy(size=high))
    num_cpus = max(c.num_cpus for c in cfgs)
    num_gpus = max(c.num_gpus for c in cfgs)
    pool = ray.data.ActorPoolStrategy(min_size=low, max_size=high,
                                      max_tasks_in_flight_per_actor=None if num_gpus else 1)
    ds = ds.map_batches(ExtractorGroup, fn_constructor_kwargs={"cfgs": tuple(cfgs), "cache_dir": cache_dir,
                                                               "num_threads": actor_threads(num_cpus)},
                        batch_size=batch_rows, compute=pool, num_cpus=num_cpus, num_gpus=num_gpus)
    names = ", ".join(f"{p.cfg.name} ({p.cfg.kind})" for p in plans)
    log.info("extracting %s for %d items into %s", names, len(items), feature_root)
    with console.current().progress("extract", len(items), "item", counts="items"):
        ds.write_datasink(FeatureSink(feature_root, {p.cfg.key: p.outputs for p in plans}),
                          ray_remote_args={"num_cpus": 0})
    if log.isEnabledFor(logging.DEBUG):  # where the time went, per operator (bench/extract.py prints it)
        log.debug("Ray Data stats of %s:\n%s", names, ds.stats())
