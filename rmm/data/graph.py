"""Graphs built once and shared by models, the BPR sampler and evaluation: the user-item interaction graph of
the train split, and sparse top-k item-item graphs from content features.

Everything here is sparse: a dataset with 200k users and 60k items must never allocate a dense U x I,
(U+I) x (U+I) or I x I matrix. The kNN graph is built in blocks of rows x column tiles with a running top-k per
item, so its peak memory is O(I * k + rows * tile), whatever the catalogue size.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rmm.data.schema import TRAIN, Dataset

SIMILARITIES = ("cosine", "dot")
NORMALIZATIONS = ("none", "sym", "row")
#: Normalisations of the user-item adjacency (:meth:`TrainGraph.adjacency`); the last is not symmetric.
ADJACENCY_NORMALIZATIONS = ("sym", "none", "row_self_loops")
#: Default bound on one similarity block (row chunk x column tile), in float32 elements (2**24: 64 MiB).
CHUNK_ELEMENTS = 1 << 24
#: Default rows per kNN chunk: enough that each block is a compute-bound matrix product. (Bounding rows by
#: CHUNK_ELEMENTS / I instead leaves 16 rows per block at 1M items, and the build streams the whole feature
#: matrix from memory for every 16 rows: 3x slower.)
KNN_ROWS = 1024
#: Elements per chunk of :func:`row_norms` (its float64 temporaries stay at 8 MiB).
_NORM_CHUNK_ELEMENTS = 1 << 20
#: Largest row norm whose float32 square is finite: the bound on a ``dot`` similarity (Cauchy-Schwarz).
_MAX_DOT_NORM = float(torch.finfo(torch.float32).max) ** 0.5
#: Row norms whose float32 inverse is a normal float32 number: outside, cosine rows are rescaled first.
_UNIT_NORMS = (1.0 / float(torch.finfo(torch.float32).max), 1.0 / float(torch.finfo(torch.float32).tiny))


def to_csr(adj: Tensor) -> Tensor:
    """A sparse COO matrix as CSR (coalesced first), without torch's "CSR support is in beta" warning.

    On 2 CPU cores a CSR ``sparse.mm`` with 64 columns is ~9x faster than COO (see ``TrainGraph.norm_adj``).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return adj.coalesce().to_sparse_csr()


def csr_of_row_major(rows: Tensor, cols: Tensor, values: Tensor, shape: tuple[int, int]) -> Tensor:
    """A CSR matrix from entries already in row-major order (``rows`` non-decreasing, distinct (row, col) pairs):
    :func:`to_csr` without its sort, for a subset of a CSR matrix's entries drawn each step (edge dropout).

    Shapes:
        rows, cols: (nnz,) int64; values: (nnz,) -> sparse CSR ``shape``.
    """
    crow = torch.zeros(shape[0] + 1, dtype=torch.int64, device=rows.device)
    torch.cumsum(torch.bincount(rows, minlength=shape[0]), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, shape, check_invariants=False)


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

    def adjacency(self, normalization: str = "sym", *, transpose: bool = False) -> Tensor:
        """The bipartite adjacency over users then items, cached per normalisation.

        Args:
            normalization: ``sym`` (:math:`D^{-1/2} A D^{-1/2}`, :meth:`norm_adj`), ``none`` (binary A; divide
                ``A @ x`` by :meth:`degrees` for a mean over neighbours while keeping A symmetric) or
                ``row_self_loops`` (:math:`(D + I)^{-1} (A + I)`: each node's mean over its neighbours and itself,
                MMRec's LATTICE; not symmetric).
            transpose: the transposed matrix (the same one for the symmetric normalisations), e.g. for the
                backward pass of :func:`rmm.models.layers.propagate`.

        Shapes:
            (U+I, U+I) float32 sparse CSR.
        """
        if normalization not in ADJACENCY_NORMALIZATIONS:
            raise ValueError(f"adjacency normalization must be one of {list(ADJACENCY_NORMALIZATIONS)}, got "
                             f"{normalization!r}")
        transpose = transpose and normalization == "row_self_loops"
        key = f"adjacency_{normalization}" + ("_t" if transpose else "")
        if key not in self._cache:
            n = self.num_users + self.num_items
            item_nodes = self.items + self.num_users
            index = torch.stack([torch.cat([self.users, item_nodes]), torch.cat([item_nodes, self.users])])
            if normalization == "row_self_loops":
                index = torch.cat([index, torch.arange(n).expand(2, n)], dim=1)  # A + I
            values = torch.ones(index.shape[1])
            if normalization != "none":
                values = normalize_edges(index, values, n, "sym" if normalization == "sym" else "row")
            if transpose:
                index = index.flip(0)
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


def row_norms(features: Tensor, *, name: str | None = None) -> Tensor:
    """Euclidean norm of every row of ``features`` as the similarities see it (cast to float32), summed in
    float64: the float32 sum of squares overflows to ``inf`` from entries of about 1e19 (and underflows to 0
    below 1e-19), which would make a large-but-finite row look missing. In float64 no finite float32 row
    overflows or underflows, so a norm is ``inf`` or NaN only for a row holding a NaN, an infinity, or a
    value beyond the float32 range (a float64 input).

    Args:
        features: one row per item.
        name: the feature's name, for the error message.

    Raises:
        ValueError: a row's norm is not finite, naming the first such row and the fix.

    Shapes:
        features (I, d) -> (I,) float64.
    """
    x = features.float()
    norms = torch.empty(len(x), dtype=torch.float64, device=x.device)
    step = max(1, _NORM_CHUNK_ELEMENTS // max(1, x.shape[1]))
    for start in range(0, len(x), step):
        norms[start:start + step] = torch.linalg.vector_norm(x[start:start + step], dim=1, dtype=torch.float64)
    bad = (~torch.isfinite(norms)).nonzero().squeeze(1)
    if len(bad):
        raise ValueError(f"{_feature_label(name)}: row {int(bad[0])} has a NaN, an infinity or a value beyond "
                         f"the float32 range ({len(bad)} such rows), so its norm is not finite; rescale the feature "
                         f"or fix those rows (re-extract or re-import it); an item without a vector must be an "
                         f"all-zero row")
    return norms


def _feature_label(name: str | None) -> str:
    return f"feature {name!r}" if name else "feature matrix"


def valid_rows(features: Tensor, *, name: str | None = None) -> Tensor:
    """Items that have a feature vector: a non-zero row. Missing items are stored as zero rows (feature-store
    contract); they must neither get neighbours nor be anyone's neighbour. A non-finite row is an error, never a
    missing item (see :func:`row_norms`).

    Shapes:
        features (I, d) -> (I,) bool.
    """
    return row_norms(features, name=name) > 0


def unit_rows(x: Tensor) -> Tensor:
    """Every row of ``x`` divided by its Euclidean norm, zero rows left zero; differentiable.

    Rows are first divided by their largest absolute entry (a constant for the gradient: the result does not
    depend on it), so their squares neither overflow nor underflow: ``F.normalize`` alone turns a row of 1e20
    entries in float32 (or 300 in float16) into zeros. A zero row is divided by 1 (its gradient stays finite).

    Shapes:
        (N, d) -> (N, d).
    """
    largest = x.detach().abs().amax(dim=1, keepdim=True)  # (N, 1)
    return F.normalize(x / torch.where(largest > 0, largest, 1.0), dim=1)


def knn_edges(features: Tensor, k: int, *, chunk_size: int | None = None, similarity: str = "cosine",
              shrink: float = 0.0, valid: Tensor | None = None, column_tile: int | None = None,
              name: str | None = None, include_self: bool = False) -> tuple[Tensor, Tensor]:
    r"""The ``k`` most similar other items of every item (itself a candidate with ``include_self``), from blocks
    of rows x columns merged into a running top-k per item, each similarity computed once for both of its items.

    Similarity is ``cosine`` (:math:`\frac{x_i^\top x_j}{\lVert x_i\rVert \lVert x_j\rVert + s}` with
    shrink :math:`s`, MMRec's ItemKNNCBF form; plain cosine for :math:`s = 0`) or ``dot``
    (:math:`x_i^\top x_j`). Both are symmetric, so only the blocks on and above the diagonal are computed
    (half the brute-force work): a block's row-wise top-k feeds its rows' lists and its column-wise top-k its
    columns' lists. An item is its own neighbour only with ``include_self`` (below). Invalid items (``valid``
    False; by default those with an all-zero row, see :func:`valid_rows`) have their similarity row and column
    masked: they get no neighbours and are nobody's neighbour, so a missing feature never yields NaN. An item
    with fewer than ``k`` valid others keeps all of them.

    With ``include_self`` the item itself is a candidate like any other, with its self-similarity (cosine 1,
    or :math:`\frac{\lVert x_i\rVert^2}{\lVert x_i\rVert^2 + s}` with shrink; dot :math:`\lVert x_i\rVert^2`):
    the top k of the whole similarity row, diagonal included, as MMRec's dense ``topk`` (LATTICE, FREEDOM). For
    cosine without shrink the item is then nearly always its own first neighbour, leaving ``k - 1`` others.

    Norms are summed in float64 (:func:`row_norms`), so the cosine of large or tiny but finite rows is exact
    (it does not depend on a row's scale); a valid row with a NaN or an infinity raises instead of dropping out,
    and so does a ``dot`` similarity that could overflow float32 (a row norm above ~1.8e19).

    Args:
        features: one row per item.
        k: neighbours per item (at most ``I - 1`` are kept; ``I`` with ``include_self``).
        chunk_size: rows per block; default :data:`KNN_ROWS`.
        column_tile: columns per block; default ``CHUNK_ELEMENTS // chunk_size``. The result depends on neither
            (up to float ties).
        similarity: ``cosine`` or ``dot``.
        shrink: added to the cosine denominator; damps the similarity of low-norm rows.
        valid: which items take part; ``valid_rows(features)`` when None.
        name: the feature's name, for error messages.
        include_self: let every valid item be a candidate neighbour of itself (see above).

    Raises:
        ValueError: bad arguments; a taking-part row that is not finite; ``dot`` norms that overflow.

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
    norms = None
    if valid is None:
        norms = row_norms(features, name=name)
        valid = norms > 0
    else:
        valid = valid.to(device=device, dtype=torch.bool)
    k = min(k, num_items if include_self else num_items - 1)
    if k < 1 or not bool(valid.any()):
        return torch.empty(2, 0, dtype=torch.long, device=device), torch.empty(0, device=device)
    chunk_size = min(num_items, chunk_size or KNN_ROWS)
    column_tile = column_tile or max(1, CHUNK_ELEMENTS // chunk_size)
    with torch.no_grad():
        blocks = _SimilarityBlocks(features, valid, similarity, shrink, norms=norms, name=name)
        top = _RunningTopK(num_items, k, device)
        for start in range(0, num_items, chunk_size):
            _merge_row_chunk(blocks, top, start, min(start + chunk_size, num_items), column_tile)
            if include_self:
                ids = torch.arange(start, min(start + chunk_size, num_items), device=device)
                top.merge(slice(start, start + len(ids)), blocks.self_similarity(start, start + len(ids)).unsqueeze(1),
                          ids.unsqueeze(1))
        return top.edges()


class _SimilarityBlocks:
    r"""Similarities of any rows x columns block of the items, with invalid items' entries at ``-inf``.

    Cosine scales both operands by their inverse norms (O((R + C) d) per block) instead of dividing the block by
    an outer product of norms (O(R C), as costly as a third of the matrix product), so the product never
    overflows whatever the rows' scale; shrink then divides the block by :math:`1 + a_i a_j` with
    :math:`a_i = \sqrt{s} / \lVert x_i\rVert` (the same ratio, with no product of two large norms). Blocks
    and column operands are written into buffers reused from block to block: a fresh 64 MiB result per block
    costs its page faults, ~25% of the matrix product on 2 CPU cores.
    """

    def __init__(self, features: Tensor, valid: Tensor, similarity: str, shrink: float, *,
                 norms: Tensor | None = None, name: str | None = None) -> None:
        x = features.float()  # no copy for float32 input: at 1M x 384 a copy is another 1.5 GB
        if not bool(valid.all()):
            x = torch.where(valid.unsqueeze(1), x, 0.0)  # (I, d); invalid rows zeroed (no NaN)
        # float64 (I,): ``norms`` are those of ``features``; invalid rows count as zero.
        norms = row_norms(x, name=name) if norms is None else torch.where(valid, norms, 0.0)
        present = valid & (norms > 0)
        if similarity == "dot" and bool((norms > _MAX_DOT_NORM).any()):
            row = int((norms > _MAX_DOT_NORM).nonzero()[0, 0])
            raise ValueError(f"{_feature_label(name)}: row {row} has norm "
                             f"{float(norms[row]):.3g}, so its dot similarities overflow float32 (above "
                             f"{_MAX_DOT_NORM:.3g}); rescale the feature or use cosine similarity")
        unit_norms = norms
        extreme = (present & ((norms < _UNIT_NORMS[0]) | (norms > _UNIT_NORMS[1]))).nonzero().squeeze(1)
        if similarity == "cosine" and len(extreme):
            # 1 / norm is no normal float32: scale these rows by a power of two (exact) to a norm in [0.5, 1).
            scale = torch.ldexp(torch.ones_like(norms[extreme]), -torch.frexp(norms[extreme]).exponent)
            x = x.index_copy(0, extreme, (x[extreme].double() * scale.unsqueeze(1)).float())  # a copy
            unit_norms = norms.index_copy(0, extreme, row_norms(x[extreme]))
        self.x, self.similarity, self.shrink = x, similarity, shrink
        self.valid = valid  # (I,) bool
        self.invalid = (~valid).nonzero().squeeze(1)  # (n_invalid,)
        self.inverse_norms = torch.where(present, 1.0 / unit_norms, 0.0).float()  # (I,)
        # a_i = sqrt(s) / |x_i|, capped where a tiny norm makes it overflow (then a_i a_j = inf: similarity 0).
        self.shrink_ratios = torch.where(present, shrink ** 0.5 / norms, 0.0).clamp_max(
            torch.finfo(torch.float32).max).float()  # (I,)
        self._scratch: dict[str, Tensor] = {}

    def _buffer(self, name: str, shape: torch.Size | tuple[int, int]) -> Tensor:
        """A reusable contiguous float32 buffer of ``shape``, grown when too small."""
        numel = shape[0] * shape[1]
        if name not in self._scratch or self._scratch[name].numel() < numel:
            self._scratch[name] = torch.empty(numel, device=self.x.device)
        return self._scratch[name][:numel].view(shape)

    def operand(self, start: int, stop: int, *, reuse: bool = False) -> Tensor:
        """Rows ``start:stop`` as one side of a block product; with ``reuse`` it may live in a buffer that the
        next such call overwrites. Shapes: (stop - start, d)."""
        rows = self.x[start:stop]
        if self.similarity != "cosine":
            return rows
        scale = self.inverse_norms[start:stop].unsqueeze(1)
        return torch.mul(rows, scale, out=self._buffer("operand", rows.shape)) if reuse else rows * scale

    def self_similarity(self, start: int, stop: int) -> Tensor:
        """The similarity of each of items ``start:stop`` with itself, as :meth:`block` would give it on the
        diagonal (``-inf`` for an invalid item). Shapes: (stop - start,)."""
        rows = self.operand(start, stop)  # (R, d)
        sim = (rows * rows).sum(1)  # (R,)
        if self.similarity == "cosine" and self.shrink > 0:
            sim = sim / (1.0 + self.shrink_ratios[start:stop] ** 2)
        if len(self.invalid):
            sim = sim.masked_fill(~self.valid[start:stop], -torch.inf)
        return sim

    def block(self, rows: Tensor, row_start: int, col_start: int, col_stop: int) -> Tensor:
        """Similarities of ``rows`` (an :meth:`operand` from ``row_start``) against items
        ``col_start:col_stop``, in a buffer that the next call overwrites. Shapes: rows (R, d) -> (R, C)."""
        sim = torch.mm(rows, self.operand(col_start, col_stop, reuse=True).T,
                       out=self._buffer("block", (len(rows), col_stop - col_start)))  # (R, C)
        if self.similarity == "cosine" and self.shrink > 0:
            ratios = torch.outer(self.shrink_ratios[row_start:row_start + len(rows)],
                                 self.shrink_ratios[col_start:col_stop], out=self._buffer("shrink", sim.shape))
            sim.div_(ratios.add_(1.0))  # cos / (1 + s / (|x_i| |x_j|)) = x_i.x_j / (|x_i| |x_j| + s)
        if len(self.invalid):
            rows_out = self.invalid[(self.invalid >= row_start) & (self.invalid < row_start + len(rows))]
            cols_out = self.invalid[(self.invalid >= col_start) & (self.invalid < col_stop)]
            sim.index_fill_(0, rows_out - row_start, -torch.inf)
            sim.index_fill_(1, cols_out - col_start, -torch.inf)
        return sim


class _RunningTopK:
    """The best ``k`` (similarity, item) pairs seen so far for every item, ``-inf`` where none yet.

    Shapes:
        values (I, k) float32, sorted decreasing per row; items (I, k) int64.
    """

    def __init__(self, num_items: int, k: int, device: torch.device) -> None:
        self.k = k
        self.values = torch.full((num_items, k), -torch.inf, device=device)
        self.items = torch.zeros((num_items, k), dtype=torch.long, device=device)

    def merge(self, ids: slice | Tensor, values: Tensor, items: Tensor) -> None:
        """Offer candidates to the items ``ids`` (a slice or an index tensor of n items).

        Shapes: values, items (n, m), any m.
        """
        merged, pick = torch.topk(torch.cat([self.values[ids], values], dim=1), self.k, dim=1)
        self.items[ids] = torch.gather(torch.cat([self.items[ids], items], dim=1), 1, pick)
        self.values[ids] = merged

    def edges(self) -> tuple[Tensor, Tensor]:
        """The found pairs as ``index`` (2, E) (rows ascending) and ``values`` (E,), ``-inf`` slots dropped."""
        found = torch.isfinite(self.values)  # (I, k)
        rows = torch.arange(len(found), device=found.device).unsqueeze(1).expand_as(found)[found]
        index = torch.empty(2, len(rows), dtype=torch.long, device=found.device)
        index[0] = rows
        del rows
        index[1] = self.items[found]
        return index, self.values[found]


def _merge_row_chunk(blocks: _SimilarityBlocks, top: _RunningTopK, start: int, stop: int, column_tile: int) -> None:
    """Merge the blocks of rows ``start:stop`` against the columns from ``start`` on into ``top``: each pair
    ``i < j`` once, offered to ``i`` (row-wise top-k) and to ``j`` (:func:`_offer_columns`). Pairs with ``j <= i``
    inside the chunk are masked (they are, or were, offered from the other side). Temporaries: one float32
    block of ``(stop - start) x column_tile`` and its top-k.
    """
    rows = blocks.operand(start, stop)  # (R, d)
    num_items, row_ids = len(blocks.x), torch.arange(start, stop, device=rows.device)
    for col_start in range(start, num_items, column_tile):
        col_stop = min(col_start + column_tile, num_items)
        sim = blocks.block(rows, start, col_start, col_stop)  # (R, C)
        if col_start < stop:  # the block reaches into the chunk's own columns: keep j > i only
            cols = torch.arange(col_start, col_stop, device=rows.device)
            sim.masked_fill_(cols.unsqueeze(0) <= row_ids.unsqueeze(1), -torch.inf)
        values, at = torch.topk(sim, min(top.k, col_stop - col_start), dim=1)  # (R, <=k)
        top.merge(slice(start, stop), values, at + col_start)
        _offer_columns(top, sim, start, col_start)


def _offer_columns(top: _RunningTopK, sim: Tensor, row_start: int, col_start: int) -> None:
    """Offer a block's entries to its columns' lists. Only a column whose best entry in the block beats its
    current k-th best can change; once the lists are full few do (for items in random order a list changes
    ~k ln(n / k) times over n items), so the column-wise ``topk`` (a strided read, 4x the cost of the row-wise
    one) runs on those columns only.

    Shapes:
        sim (R, C): items ``row_start:`` x ``col_start:``.
    """
    num_rows, num_cols = sim.shape
    columns = torch.arange(col_start, col_start + num_cols, device=sim.device)
    hit = sim.amax(dim=0) > top.values[columns, -1]  # (C,)
    if not bool(hit.all()):
        picked = hit.nonzero().squeeze(1)  # (H,)
        sim, columns = sim.index_select(1, picked), columns[picked]  # (R, H)
    if len(columns):
        values, at = torch.topk(sim, min(top.k, num_rows), dim=0)  # (<=k, H)
        top.merge(columns, values.T, at.T + row_start)


def knn_graph(features: Tensor, k: int, *, chunk_size: int | None = None, similarity: str = "cosine",
              shrink: float = 0.0, valid: Tensor | None = None, name: str | None = None,
              include_self: bool = False) -> Tensor:
    """Sparse top-``k`` item-item similarity graph (see :func:`knn_edges`), never a dense I x I matrix.

    Row ``i`` holds item ``i``'s neighbours weighted by their similarity; the graph is directed (``j`` in
    ``i``'s top k does not put ``i`` in ``j``'s). Normalise it with :func:`normalize_graph`.

    Shapes:
        features (I, d) -> (I, I) float32 sparse COO, coalesced, at most k entries per row.
    """
    index, values = knn_edges(features, k, chunk_size=chunk_size, similarity=similarity, shrink=shrink,
                              valid=valid, name=name, include_self=include_self)
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
    values = torch.cat([w * g.values().float() for g, w in zip(graphs, weights, strict=True)])
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
        include_self: each item is a candidate neighbour of itself (MMRec's top k of the whole similarity row,
            diagonal included; see :func:`knn_edges`). False: the ``k`` nearest *other* items.
    """

    k: int
    similarity: str = "cosine"
    shrink: float = 0.0
    binary: bool = False
    normalization: str = "none"
    include_self: bool = False

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")
        if self.similarity not in SIMILARITIES:
            raise ValueError(f"similarity must be one of {list(SIMILARITIES)}, got {self.similarity!r}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {list(NORMALIZATIONS)}, got {self.normalization!r}")
        if self.shrink < 0:
            raise ValueError(f"shrink must be >= 0, got {self.shrink}")

    def build(self, features: Tensor, *, chunk_size: int | None = None, name: str | None = None) -> Tensor:
        """The normalised kNN graph of ``features`` (named ``name`` in errors) in memory.

        Shapes: (I, d) -> (I, I) sparse COO.
        """
        adj = knn_graph(features, self.k, chunk_size=chunk_size, similarity=self.similarity, shrink=self.shrink,
                        name=name, include_self=self.include_self)
        return normalize_graph(adj, self.normalization, binary=self.binary)


# ---------------------------------------------------------------------------------- user-user co-occurrence graph


def user_cooccurrence_graph(graph: TrainGraph, k: int, *, chunk_elements: int = CHUNK_ELEMENTS) -> Tensor:
    r"""Each user's ``k`` nearest other users by co-occurrence: the number of train items two users share,
    :math:`C = R R^\top` off the diagonal (DualGNN's and DRAGON's user-user graph).

    Row ``u`` keeps the ``k`` users ``v != u`` with the largest :math:`C_{uv} > 0` (fewer when ``u`` shares items
    with fewer users; none for a user without items), ties broken towards the smaller user id, so the graph is a
    deterministic function of the train graph. Built in chunks of users from the sparse product
    ``R[chunk] @ R^T`` (chunks of at most ``chunk_elements`` user pairs), whose entries are ranked per row by a
    stable sort; never a dense U x U matrix. The graph is directed (``v`` in ``u``'s top k does not put ``u`` in
    ``v``'s).

    Shapes:
        -> (U, U) float32 sparse COO, coalesced, values the co-occurrence counts, at most ``k`` entries per row.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    num_users = graph.num_users
    user_items = graph.user_items()
    items_users = graph.interactions(transpose=True).to_sparse_coo()  # (I, U)
    rows_per_chunk = max(1, chunk_elements // max(1, num_users))
    rows: list[Tensor] = []
    cols: list[Tensor] = []
    counts: list[Tensor] = []
    for start in range(0, num_users, rows_per_chunk):
        stop = min(start + rows_per_chunk, num_users)
        chunk = user_items.sparse(torch.arange(start, stop))  # (B, I) COO, ones
        shared = torch.sparse.mm(chunk, items_users).coalesce()  # (B, U): entries by row, then column
        row, col = shared.indices()
        count = shared.values().round().long()  # exact integer counts
        other = (col != row + start) & (count > 0)  # never one's own neighbour
        row, col, count = row[other], col[other], count[other]
        # Per row: count descending, then column ascending (the stable sort keeps the coalesced column order).
        most = int(count.max()) + 1 if len(count) else 1
        order = torch.sort(row * most + (most - 1 - count), stable=True).indices
        row, col, count = row[order], col[order], count[order]
        per_row = torch.bincount(row, minlength=stop - start)
        rank = torch.arange(len(row)) - (torch.cumsum(per_row, 0) - per_row)[row]
        top = rank < k
        rows.append(row[top] + start)
        cols.append(col[top])
        counts.append(count[top].float())
    index = torch.stack([torch.cat(rows), torch.cat(cols)]) if rows else torch.zeros(2, 0, dtype=torch.long)
    values = torch.cat(counts) if counts else torch.zeros(0)
    return torch.sparse_coo_tensor(index, values, (num_users, num_users), check_invariants=True).coalesce()


@dataclass(frozen=True)
class UserGraphSpec:
    """Everything a user-user co-occurrence graph depends on besides the train graph: what a model asks for
    (``user_graph_spec``) and what :func:`rmm.data.knn_cache.cached_user_graph` keys its files on.

    Attributes:
        k: neighbours per user (see :func:`user_cooccurrence_graph`).
    """

    k: int

    def __post_init__(self) -> None:
        if self.k < 1:
            raise ValueError(f"k must be >= 1, got {self.k}")

    def build(self, graph: TrainGraph) -> Tensor:
        """The co-occurrence graph of ``graph`` in memory. Shapes: -> (U, U) sparse COO, values the counts."""
        return user_cooccurrence_graph(graph, self.k)
