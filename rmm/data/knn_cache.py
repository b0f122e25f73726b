"""A disk cache of item-item kNN graphs and user-user co-occurrence graphs, for the trainer (models never touch
files).

A graph is a pure function of the feature matrix and a :class:`~rmm.data.graph.KNNSpec`, so its file is named
by the sha256 of both: the feature bytes (with dtype and shape) and every spec field (k, similarity, shrink,
binary, normalisation, include_self). Re-extracting a feature changes its bytes and therefore misses the cache;
nothing needs invalidating by hand. Writes go to a temporary file renamed into place, so concurrent Ray Train
workers building the same graph never read a half-written file.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import pickle
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from rmm.data.graph import KNNSpec, TrainGraph, UserGraphSpec

log = logging.getLogger(__name__)

#: Bumped when the graph construction changes, so old files miss instead of being reused (2: norms in float64,
#: so features of large or tiny scale no longer build an empty graph).
FORMAT_VERSION = 2


def feature_digest(features: Tensor) -> str:
    """sha256 of a feature matrix's values, dtype and shape (as stored on the CPU, C order)."""
    array = np.ascontiguousarray(features.detach().cpu().numpy())
    digest = hashlib.sha256(f"{array.dtype.str}:{array.shape}".encode())
    digest.update(array.tobytes())
    return digest.hexdigest()


def cache_key(features: Tensor, spec: KNNSpec) -> str:
    """The cache key of ``spec``'s graph of ``features``: a sha256 hex string over all of ``spec``'s fields, so a
    graph with self-loops (``include_self``) never answers for one without."""
    payload = {"version": FORMAT_VERSION, "features": feature_digest(features), **dataclasses.asdict(spec)}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cached_knn_graph(features: Tensor, spec: KNNSpec, *, cache_dir: str | Path | None,
                     chunk_size: int | None = None, name: str | None = None) -> Tensor:
    """``spec.build(features)``, read from ``cache_dir`` when built before, else built and written there.

    Args:
        features: (I, d) item features of one modality.
        spec: the graph to build (a model's ``item_graph_spec``).
        cache_dir: directory of ``knn-<key>.pt`` files, created on demand; None builds in memory only.
        chunk_size: rows per similarity block (memory bound only; not part of the key).
        name: the feature's name, for error messages (not part of the key).

    Returns:
        (I, I) float32 sparse COO, coalesced, on the CPU.
    """
    if cache_dir is None:
        return spec.build(features.cpu(), chunk_size=chunk_size, name=name)
    path = Path(cache_dir) / f"knn-{cache_key(features, spec)}.pt"
    what = (f"kNN graph (k={spec.k}, {spec.similarity}{', self included' if spec.include_self else ''}) of "
            f"{features.shape[0]} items")
    return _cached(path, spec, what, lambda: spec.build(features.cpu(), chunk_size=chunk_size, name=name))


def train_graph_digest(graph: TrainGraph) -> str:
    """sha256 of a train graph: its sizes and its (user, item) pairs in order."""
    digest = hashlib.sha256(f"{graph.num_users}:{graph.num_items}".encode())
    for ids in (graph.users, graph.items):
        digest.update(np.ascontiguousarray(ids.detach().cpu().long().numpy()).tobytes())
    return digest.hexdigest()


def cached_user_graph(graph: TrainGraph, spec: UserGraphSpec, *, cache_dir: str | Path | None) -> Tensor:
    """``spec.build(graph)`` (a user-user co-occurrence graph), read from ``cache_dir`` when built before, else
    built and written there as ``user-knn-<key>.pt``, the key the sha256 of the train graph and every spec field.

    Returns:
        (U, U) float32 sparse COO, coalesced, on the CPU.
    """
    if cache_dir is None:
        return spec.build(graph)
    payload = {"version": FORMAT_VERSION, "train_graph": train_graph_digest(graph), **dataclasses.asdict(spec)}
    path = Path(cache_dir) / f"user-knn-{hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()}.pt"
    return _cached(path, spec, f"user graph (k={spec.k}) of {graph.num_users} users", lambda: spec.build(graph))


def _cached(path: Path, spec: KNNSpec | UserGraphSpec, what: str, build: Callable[[], Tensor]) -> Tensor:
    """The sparse graph stored at ``path``, or ``build()`` written there (temporary file renamed into place).
    An unreadable file is rebuilt. ``spec`` is stored beside the graph, for whoever inspects the file."""
    if path.exists():
        try:
            stored = torch.load(path, weights_only=True)
            graph = torch.sparse_coo_tensor(stored["indices"], stored["values"], tuple(stored["size"]),
                                            check_invariants=True).coalesce()
        except (OSError, EOFError, RuntimeError, KeyError, IndexError, ValueError, pickle.UnpicklingError) as err:
            log.warning("%s cache file %s is unreadable (%s); rebuilding it", what, path, err)
        else:
            log.info("%s: cache hit %s", what, path)
            return graph
    log.info("%s: cache miss, building %s", what, path.name)
    graph = build()
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        torch.save({"indices": graph.indices(), "values": graph.values(), "size": list(graph.shape),
                    "spec": dataclasses.asdict(spec)}, tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return graph
