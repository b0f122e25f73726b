"""Graphs built once and shared by models, the BPR sampler and evaluation: the user-item interaction graph of
the train split, and sparse top-k item-item graphs from content features.

Everything here is sparse: a dataset with 200k users and 60k items must never allocate a dense U x I,
(U+I) x (U+I) or I x I matrix. The kNN graph is built in blocks of rows x column tiles with a running top-k per
row, so its peak memory is O(I * k + rows * tile), whatever the catalogue size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from rmm.data.schema import TRAIN, Dataset

SIMILARITIES = ("cosine", "dot")
NORMALIZATIONS = ("none", "sym", "row")
#: Default bound on one similarity block (row chunk x column tile), in float32 elements (2**24: 64 MiB).
CHUNK_ELEMENTS = 1 << 24
#: Default rows per kNN chunk: enough that each block is a compute-bound matrix product. (Bounding rows by
#: CHUNK_ELEMENTS / I instead leaves 16 rows per block at 1M items, and the build streams the whole feature
#: matrix from memory for every 16 rows: 3x slower.)
KNN_ROWS = 1024


def to_csr(adj: Tensor) -> Tensor:
    """A sparse COO matrix as CSR (coalesced first), without torch's "CSR support is in beta" warning.

    On 2 CPU cores a CSR ``sparse.mm`` with 64 columns is ~9x faster than COO (see ``TrainGraph.norm_adj``).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return adj.coalesce().to_sparse_csr()


@dataclass(frozen=True, eq=False)
class UserItems:
    """A user -> items relation in CSR form (row = user), e.g. the train items to mask at evaluation.

    Shapes:
        indptr: (num_users + 1,) int64; indices: (nnz,) int64 item ids, sorted within each row.
    """

    indptr: Tensor
    indices: Tensor
    num_items: int

    @classmethod
    def from_pairs(cls, users: Tensor, items: Tensor, num_users: int, num_items: int) -> UserItems:
        """Build from parallel id tensors; duplicate (user, item) pairs collapse to one."""
        keys = torch.unique(users.long() * num_items + items.long())  # sorted: by user, then item
        rows = keys // num_items
        counts = torch.bincount(rows, minlength=num_users)
        indptr = torch.zeros(num_users + 1, dtype=torch.long)
        indptr[1:] = torch.cumsum(counts, 0)
        return cls(indptr=indptr, indices=keys % num_items, num_items=num_items)

    def counts(self, users: Tensor) -> Tensor:
        """Number of items of each user. Shapes: users (B,) -> (B,)."""
        return self.indptr[users + 1] - self.indptr[users]

    def entries(self, users: Tensor) -> tuple[Tensor, Tensor]:
        """Positions of the items of a chunk of users: row (index into ``users``) and item id, each (nnz,)."""
        users = users.cpu()
        counts = self.counts(users)
        row = torch.repeat_interleave(torch.arange(len(users)), counts)
        first = torch.repeat_interleave(self.indptr[users], counts)
        offset = torch.arange(len(row)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        return row, self.indices[first + offset]

    def mask(self, users: Tensor) -> Tensor:
        """Dense boolean rows for a chunk of users. Shapes: users (B,) -> (B, num_items)."""
        row, col = self.entries(users)
        out = torch.zeros(len(users), self.num_items, dtype=torch.bool)
        out[row, col] = True
        return out

    def sparse(self, users: Tensor, *, mean: bool = False) -> Tensor:
        """The users' rows as a sparse COO float matrix: ones, or ``1 / count`` when ``mean`` (a user with no
        item has an empty row). Shapes: users (B,) -> (B, num_items), on ``users``' device."""
        row, col = self.entries(users)
        values = torch.ones(len(row))
        if mean:
            values = values / self.counts(users.cpu())[row]
        out = torch.sparse_coo_tensor(torch.stack([row, col]), values, (len(users), self.num_items),
                                      check_invariants=False)  # built right here
        return out.coalesce().to(users.device)


@dataclass(frozen=True, eq=False)
class TrainGraph:
    """The bipartite user-item graph of the train split: what a model may see while fitting.

    Shapes:
        users, items: (E,) int64, one entry per distinct train (user, item) pair.
    """

    num_users: int
    num_items: int
    users: Tensor
    items: Tensor
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    @classmethod
    def from_dataset(cls, ds: Dataset) -> TrainGraph:
        """Distinct train pairs of ``ds``; repeated interactions count once, as in implicit-feedback BPR."""
        train = ds.split(TRAIN)
        pairs = UserItems.from_pairs(torch.tensor(train["user_id"].to_numpy()),
                                     torch.tensor(train["item_id"].to_numpy()), ds.num_users, ds.num_items)
        users = torch.repeat_interleave(torch.arange(ds.num_users), pairs.counts(torch.arange(ds.num_users)))
        return cls(num_users=ds.num_users, num_items=ds.num_items, users=users, items=pairs.indices)

    def norm_adj(self) -> Tensor:
        r"""Symmetric-normalised adjacency :math:`D^{-1/2} A D^{-1/2}` over users then items, cached.

        Built as a COO tensor (duplicates summed once), returned as CSR: on 2 CPU cores a CSR
        ``sparse.mm`` with 64 columns is ~9x faster than COO, and the symmetric backward in
        :func:`rmm.models.layers.propagate` never needs the slow CSR transpose. Zero-degree nodes get a zero
        row instead of ``inf``.

        Shapes:
            (U+I, U+I) float32 sparse CSR.
        """
        return self.adjacency("sym")

    def adjacency(self, normalization: str = "sym") -> Tensor:
        """The symmetric bipartite adjacency over users then items, cached per normalisation.

        Args:
            normalization: ``sym`` (:math:`D^{-1/2} A D^{-1/2}`, :meth:`norm_adj`) or ``none`` (binary A; divide
                ``A @ x`` by :meth:`degrees` for a mean over neighbours while keeping A symmetric).

        Shapes:
            (U+I, U+I) float32 sparse CSR.
        """
        if normalization not in ("sym", "none"):
            raise ValueError(f"adjacency normalization must be 'sym' or 'none', got {normalization!r}")
        key = f"adjacency_{normalization}"
        if key not in self._cache:
            n = self.num_users + self.num_items
            item_nodes = self.items + self.num_users
            index = torch.stack([torch.cat([self.users, item_nodes]), torch.cat([item_nodes, self.users])])
            values = torch.ones(index.shape[1])
            if normalization == "sym":
                values = normalize_edges(index, values, n, "sym")
            adj = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=True)
            self._cache[key] = to_csr(adj)
        return self._cache[key]

    def degrees(self) -> Tensor:
        """Number of train neighbours of every node, users then items. Shapes: (U+I,) float32."""
        return torch.cat([torch.bincount(self.users, minlength=self.num_users),
                          torch.bincount(self.items, minlength=self.num_items)]).float()

    def interactions(self, *, transpose: bool = False) -> Tensor:
        """The binary interaction matrix R (or its transpose), cached.

        Shapes:
            (U, I) float32 sparse CSR; (I, U) when ``transpose``.
        """
        key = f"interactions_{transpose}"
        if key not in self._cache:
            rows, cols = (self.items, self.users) if transpose else (self.users, self.items)
            shape = (self.num_items, self.num_users) if transpose else (self.num_users, self.num_items)
            adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.ones(len(rows)), shape,
                                          check_invariants=True)
            self._cache[key] = to_csr(adj)
        return self._cache[key]

    def user_items(self) -> UserItems:
        """The train items of every user in CSR form, cached."""
        if "user_items" not in self._cache:
            self._cache["user_items"] = UserItems.from_pairs(self.users, self.items, self.num_users,
                                                             self.num_items)
        return self._cache["user_items"]


# ---------------------------------------------------------------------------------- item-item kNN graphs


def valid_rows(features: Tensor) -> Tensor:
    """Items that have a feature vector: a finite, non-zero row. Missing items are stored as zero rows
    (feature-store contract); they must neither get neighbours nor be anyone's neighbour.

    Shapes:
        features (I, d) -> (I,) bool.
    """
    norms = features.float().norm(dim=1)
    return torch.isfinite(norms) & (norms > 0)


def knn_edges(features: Tensor, k: int, *, chunk_size: int | None = None, similarity: str = "cosine",
              shrink: float = 0.0, valid: Tensor | None = None,
              column_tile: int | None = None) -> tuple[Tensor, Tensor]:
    r"""The ``k`` most similar other items of every item, computed one chunk of rows at a time, each against
    one tile of columns at a time with a running top-k.

    Similarity is ``cosine`` (:math:`\frac{x_i^\top x_j}{\lVert x_i\rVert \lVert x_j\rVert + s}` with
    shrink :math:`s`, MMRec's ItemKNNCBF form; plain cosine for :math:`s = 0`) or ``dot``
    (:math:`x_i^\top x_j`). An item is never its own neighbour. Invalid items (``valid`` False; by default
    those with a zero or non-finite row, see :func:`valid_rows`) have their similarity row and column masked:
    they get no neighbours and are nobody's neighbour, so a missing feature never yields NaN. An item with
    fewer than ``k`` valid others keeps all of them.

    Args:
        features: one row per item.
        k: neighbours per item (at most ``I - 1`` are kept).
        chunk_size: rows per chunk; default :data:`KNN_ROWS`.
        column_tile: columns per block; default ``CHUNK_ELEMENTS // chunk_size``. The result depends on neither
            (up to float ties).
        similarity: ``cosine`` or ``dot``.
        shrink: added to the cosine denominator; damps the similarity of low-norm rows.
        valid: which items take part; ``valid_rows(features)`` when None.

    Returns:
        ``index`` (2, E) int64 (row = item, col = neighbour; rows ascending, within a row by decreasing
        similarity) and ``values`` (E,) float32 similarities, with E <= I * k. No gradient.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if similarity not in SIMILARITIES:
        raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {similarity!r}")
    if features.ndim != 2:
        raise ValueError(f"features must be a (num_items, dim) matrix, got shape {tuple(features.shape)}")
    num_items, device = features.shape[0], features.device
    valid = valid_rows(features) if valid is None else valid.to(device=device, dtype=torch.bool)
    k = min(k, num_items - 1)
    if k < 1 or not bool(valid.any()):
        return torch.empty(2, 0, dtype=torch.long, device=device), torch.empty(0, device=device)
    chunk_size = min(num_items, chunk_size or KNN_ROWS)
    column_tile = column_tile or max(1, CHUNK_ELEMENTS // chunk_size)
    with torch.no_grad():
        x = features.float()  # no copy for float32 input: at 1M x 384 a copy is another 1.5 GB
        if not bool(valid.all()):
            x = torch.where(valid.unsqueeze(1), x, 0.0)  # (I, d); invalid rows zeroed (no NaN)
        norms = x.norm(dim=1)
        rows, cols, values = [], [], []
        for start in range(0, num_items, chunk_size):
            chunk = torch.arange(start, min(start + chunk_size, num_items), device=device)
            top, at = _chunk_top_k(x, norms, valid, chunk, k, similarity, shrink, column_tile)
            found = torch.isfinite(top)
            rows.append(chunk.unsqueeze(1).expand(-1, k)[found])
            cols.append(at[found])
            values.append(top[found])
        # Concatenated straight into the result (no stacked copy), each list freed once copied.
        index = torch.empty(2, sum(len(r) for r in rows), dtype=torch.long, device=device)
        torch.cat(rows, out=index[0])
        del rows
        torch.cat(cols, out=index[1])
        del cols
    return index, torch.cat(values)


def _chunk_top_k(x: Tensor, norms: Tensor, valid: Tensor, chunk: Tensor, k: int, similarity: str,
                 shrink: float, column_tile: int) -> tuple[Tensor, Tensor]:
    """The ``k`` best similarities of the rows ``chunk`` against all rows and their columns, ``-inf`` where an
    item has fewer than ``k`` valid others: one ``(C, column_tile)`` block at a time, merged into a running
    top-k. Temporaries: two float32 blocks and one bool block of that size.

    Shapes:
        x (I, d), norms (I,), valid (I,), chunk (C,) -> values (C, k), indices (C, k).
    """
    num_items = x.shape[0]
    rows = x[chunk]  # (C, d)
    best = torch.full((len(chunk), k), -torch.inf, device=x.device)
    best_at = torch.zeros((len(chunk), k), dtype=torch.long, device=x.device)
    for start in range(0, num_items, column_tile):
        stop = min(start + column_tile, num_items)
        sim = rows @ x[start:stop].T  # (C, T)
        if similarity == "cosine":
            denominator = torch.outer(norms[chunk], norms[start:stop])  # (C, T)
            sim.div_(denominator.add_(shrink).clamp_min_(1e-12))
            del denominator
        keep = valid[chunk].unsqueeze(1) & valid[start:stop].unsqueeze(0)  # (C, T)
        own = (chunk >= start) & (chunk < stop)
        keep[own.nonzero().squeeze(1), chunk[own] - start] = False  # never its own neighbour
        sim.masked_fill_(~keep, -torch.inf)
        top, at = torch.topk(sim, min(k, stop - start), dim=1)  # (C, <=k)
        del sim, keep
        merged = torch.cat([best, top], dim=1)
        best, pick = torch.topk(merged, k, dim=1)
        best_at = torch.gather(torch.cat([best_at, at + start], dim=1), 1, pick)
    return best, best_at


def knn_graph(features: Tensor, k: int, *, chunk_size: int | None = None, similarity: str = "cosine",
              shrink: float = 0.0, valid: Tensor | None = None) -> Tensor:
    """Sparse top-``k`` item-item similarity graph (see :func:`knn_edges`), never a dense I x I matrix.

    Row ``i`` holds item ``i``'s neighbours weighted by their similarity; the graph is directed (``j`` in
    ``i``'s top k does not put ``i`` in ``j``'s). Normalise it with :func:`normalize_graph`.

    Shapes:
        features (I, d) -> (I, I) float32 sparse COO, coalesced, at most k entries per row.
    """
    index, values = knn_edges(features, k, chunk_size=chunk_size, similarity=similarity, shrink=shrink,
                              valid=valid)
    num_items = features.shape[0]
    return torch.sparse_coo_tensor(index, values, (num_items, num_items), check_invariants=True).coalesce()


def combine_graphs(graphs: Sequence[Tensor], weights: Sequence[float]) -> Tensor:
    r"""The weighted sum of sparse graphs of one shape, :math:`\sum_m w_m S_m` (edges present in several add).

    Shapes:
        M x (N, N) sparse COO -> (N, N) float32 sparse COO, coalesced.
    """
    if not graphs or len(graphs) != len(weights):
        raise ValueError(f"need one weight per graph, got {len(graphs)} graphs and {len(weights)} weights")
    graphs = [g.coalesce() for g in graphs]
    index = torch.cat([g.indices() for g in graphs], dim=1)
    values = torch.cat([w * g.values().float() for g, w in zip(graphs, weights)])
    return torch.sparse_coo_tensor(index, values, graphs[0].shape, check_invariants=True).coalesce()


def normalize_edges(index: Tensor, values: Tensor, num_nodes: int, normalization: str = "sym") -> Tensor:
    r"""Edge weights of a normalised graph, differentiable in ``values``.

    ``sym``: :math:`D^{-1/2} A D^{-1/2}` (LATTICE, FREEDOM); ``row``: :math:`D^{-1} A` (each row a mean);
    ``none``: unchanged. :math:`D` holds row sums (out-degrees of a directed kNN graph, as MMRec); a node with
    a non-positive row sum contributes 0 instead of ``inf`` or NaN.

    Shapes:
        index (2, E) int64; values (E,) -> (E,).
    """
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {normalization!r}")
    if normalization == "none":
        return values
    degree = torch.zeros(num_nodes, dtype=values.dtype, device=values.device).index_add(0, index[0], values)
    positive = degree > 0
    safe = torch.where(positive, degree, torch.ones_like(degree))
    if normalization == "sym":
        inv_sqrt = torch.where(positive, safe.pow(-0.5), torch.zeros_like(degree))
        return inv_sqrt[index[0]] * values * inv_sqrt[index[1]]
    inv = torch.where(positive, 1.0 / safe, torch.zeros_like(degree))
    return inv[index[0]] * values


def normalize_graph(adj: Tensor, normalization: str = "sym", *, binary: bool = False) -> Tensor:
    """A normalised copy of a sparse square graph (see :func:`normalize_edges`); ``binary`` first sets every
    edge weight to 1 (FREEDOM's unweighted kNN graph).

    Shapes:
        (N, N) sparse COO -> (N, N) float32 sparse COO, coalesced.
    """
    adj = adj.coalesce()
    index, values = adj.indices(), adj.values().float()
    if binary:
        values = torch.ones_like(values)
    values = normalize_edges(index, values, adj.shape[0], normalization)
    # Same (coalesced) indices: flag them so, instead of sorting a copy again.
    return torch.sparse_coo_tensor(index, values, adj.shape, check_invariants=True, is_coalesced=True)


@dataclass(frozen=True)
class KNNSpec:
    """Everything an item-item kNN graph depends on besides the features: what a model asks for and what
    :func:`rmm.data.knn_cache.cached_knn_graph` keys its files on.

    Attributes:
        k: neighbours per item.
        similarity: ``cosine`` or ``dot``.
        shrink: cosine denominator shrinkage.
        binary: drop the similarity weights (every kept edge weighs 1) before normalising.
        normalization: ``none``, ``sym`` or ``row`` (see :func:`normalize_edges`).
    """

    k: int
    similarity: str = "cosine"
    shrink: float = 0.0
    binary: bool = False
    normalization: str = "none"

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {self.similarity!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")

    def build(self, features: Tensor, *, chunk_size: int | None = None) -> Tensor:
        """The normalised kNN graph of ``features`` in memory. Shapes: (I, d) -> (I, I) sparse COO."""
        adj = knn_graph(features, self.k, chunk_size=chunk_size, similarity=self.similarity, shrink=self.shrink)
        return normalize_graph(adj, self.normalization, binary=self.binary)
