"""Interaction graphs built once from a dataset and shared by models, the BPR sampler and evaluation.

Everything here is sparse: a dataset with 200k users and 60k items must never allocate a dense U x I or
(U+I) x (U+I) matrix.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import Tensor

from rmm.data.schema import TRAIN, Dataset


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

    def mask(self, users: Tensor) -> Tensor:
        """Dense boolean rows for a chunk of users. Shapes: users (B,) -> (B, num_items)."""
        counts = self.counts(users)
        row = torch.repeat_interleave(torch.arange(len(users)), counts)
        first = torch.repeat_interleave(self.indptr[users], counts)
        offset = torch.arange(len(row)) - torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
        out = torch.zeros(len(users), self.num_items, dtype=torch.bool)
        out[row, self.indices[first + offset]] = True
        return out


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
    _cache: dict[str, Tensor] = field(default_factory=dict, init=False, repr=False)

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
        if "norm_adj" not in self._cache:
            n = self.num_users + self.num_items
            item_nodes = self.items + self.num_users
            index = torch.stack([torch.cat([self.users, item_nodes]), torch.cat([item_nodes, self.users])])
            degree = torch.bincount(index[0], minlength=n).float()
            inv_sqrt = degree.pow(-0.5).masked_fill(degree == 0, 0.0)
            values = inv_sqrt[index[0]] * inv_sqrt[index[1]]
            adj = torch.sparse_coo_tensor(index, values, (n, n), check_invariants=True).coalesce()
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
                self._cache["norm_adj"] = adj.to_sparse_csr()
        return self._cache["norm_adj"]
