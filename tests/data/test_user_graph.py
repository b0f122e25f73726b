"""The user-user co-occurrence graph against a dense reference: explicit set intersections and a sorted top-k."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rmm.data.graph import TrainGraph, UserGraphSpec, user_cooccurrence_graph
from rmm.data.knn_cache import cached_user_graph


def _random_graph(num_users: int, num_items: int, density: float, seed: int) -> TrainGraph:
    generator = torch.Generator().manual_seed(seed)
    mask = torch.rand(num_users, num_items, generator=generator) < density
    mask[-1] = False  # a user without items: no neighbours, nobody's neighbour
    users, items = mask.nonzero(as_tuple=True)
    return TrainGraph(num_users, num_items, users=users, items=items)


def dense_reference(graph: TrainGraph, k: int) -> torch.Tensor:
    """Row u: the k users v != u with the most shared items (> 0), ties to the smaller id. Shapes: (U, U)."""
    sets: list[set[int]] = [set() for _ in range(graph.num_users)]
    for user, item in zip(graph.users.tolist(), graph.items.tolist(), strict=True):
        sets[user].add(item)
    out = torch.zeros(graph.num_users, graph.num_users)
    for u in range(graph.num_users):
        shared = [(len(sets[u] & sets[v]), v) for v in range(graph.num_users) if v != u]
        ranked = sorted((pair for pair in shared if pair[0] > 0), key=lambda pair: (-pair[0], pair[1]))
        for count, v in ranked[:k]:
            out[u, v] = count
    return out


@pytest.mark.parametrize("k", [1, 3, 40])
@pytest.mark.parametrize("chunk_elements", [1, 7, 1 << 24])
def test_user_graph_matches_dense_reference(k: int, chunk_elements: int) -> None:
    graph = _random_graph(23, 11, 0.3, seed=k)  # few items: many ties among the counts
    adj = user_cooccurrence_graph(graph, k, chunk_elements=chunk_elements)
    assert adj.is_sparse and adj.is_coalesced() and adj.shape == (23, 23)
    assert int((adj.to_dense() > 0).sum(1).max()) <= k
    torch.testing.assert_close(adj.to_dense(), dense_reference(graph, k), rtol=0, atol=0)


def test_user_graph_edge_cases() -> None:
    single = TrainGraph(1, 3, users=torch.tensor([0, 0]), items=torch.tensor([0, 2]))
    assert user_cooccurrence_graph(single, 5)._nnz() == 0
    disjoint = TrainGraph(3, 3, users=torch.tensor([0, 1, 2]), items=torch.tensor([0, 1, 2]))
    assert user_cooccurrence_graph(disjoint, 2)._nnz() == 0
    with pytest.raises(ValueError, match="k must be >= 1"):
        user_cooccurrence_graph(disjoint, 0)


def test_cached_user_graph_writes_once_and_keys_on_graph_and_k(tmp_path: Path) -> None:
    graph = _random_graph(15, 9, 0.4, seed=1)
    spec = UserGraphSpec(k=4)
    first = cached_user_graph(graph, spec, cache_dir=tmp_path)
    files = sorted(tmp_path.glob("user-knn-*.pt"))
    assert len(files) == 1
    again = cached_user_graph(graph, spec, cache_dir=tmp_path)  # a hit: read back, not rebuilt
    torch.testing.assert_close(again.to_dense(), first.to_dense(), rtol=0, atol=0)
    torch.testing.assert_close(first.to_dense(), dense_reference(graph, 4), rtol=0, atol=0)
    cached_user_graph(graph, UserGraphSpec(k=5), cache_dir=tmp_path)
    cached_user_graph(_random_graph(15, 9, 0.4, seed=2), spec, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("user-knn-*.pt"))) == 3
    files[0].write_bytes(b"not a tensor file")  # unreadable: rebuilt and rewritten
    torch.testing.assert_close(cached_user_graph(graph, spec, cache_dir=tmp_path).to_dense(), first.to_dense())
    with pytest.raises(ValueError, match="k must be >= 1"):
        UserGraphSpec(k=0)
