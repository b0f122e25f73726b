"""Item-item kNN graphs: brute-force agreement, chunking, missing and degenerate features, normalisation, the disk
cache."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from rmm.data import graph as graph_module
from rmm.data.graph import (
    KNNSpec,
    TrainGraph,
    combine_graphs,
    csr_of_row_major,
    knn_edges,
    knn_graph,
    normalize_graph,
    row_norms,
    to_csr,
    unit_rows,
    valid_rows,
)
from rmm.data.knn_cache import cache_key, cached_knn_graph

NUM_ITEMS, DIM, K = 23, 5, 4


def _features(seed: int = 0) -> torch.Tensor:
    return torch.randn(NUM_ITEMS, DIM, generator=torch.Generator().manual_seed(seed))


def _brute_force(features: torch.Tensor, k: int, shrink: float = 0.0, similarity: str = "cosine",
                 include_self: bool = False) -> torch.Tensor:
    """Dense reference: cosine (with shrink) or dot of every pair, zero rows (and self, unless ``include_self``)
    excluded, top k per row kept."""
    norms = features.norm(dim=1)
    sim = features @ features.T
    if similarity == "cosine":
        sim = sim / (norms[:, None] * norms[None, :] + shrink)
    valid = norms > 0
    diagonal = torch.eye(len(features), dtype=torch.bool) & (not include_self)
    sim = sim.masked_fill(~(valid[:, None] & valid[None, :]) | diagonal, -torch.inf)
    top, at = torch.topk(sim, k, dim=1)
    dense = torch.zeros_like(sim).scatter(1, at, top)
    return torch.where(torch.isfinite(dense), dense, 0.0)


@pytest.mark.parametrize("shrink", [0.0, 10.0])
def test_knn_graph_matches_dense_brute_force_top_k(shrink: float) -> None:
    features = _features()
    adj = knn_graph(features, K, shrink=shrink)
    assert adj.is_sparse and adj.shape == (NUM_ITEMS, NUM_ITEMS)
    assert torch.allclose(adj.to_dense(), _brute_force(features, K, shrink), atol=1e-6)
    assert (adj.indices()[0] != adj.indices()[1]).all()  # never its own neighbour
    assert torch.equal(torch.bincount(adj.indices()[0], minlength=NUM_ITEMS), torch.full((NUM_ITEMS,), K))


def test_dot_similarity_ranks_by_inner_product() -> None:
    features = _features(1)
    dense = features @ features.T
    dense.fill_diagonal_(-torch.inf)
    _, expected = torch.topk(dense, K, dim=1)
    index, values = knn_edges(features, K, similarity="dot")
    assert torch.equal(index[1].view(NUM_ITEMS, K), expected)
    assert torch.allclose(values.view(NUM_ITEMS, K), dense.gather(1, expected))


@pytest.mark.parametrize("chunk_size", [1, 5, 7, NUM_ITEMS, 100])
def test_knn_graph_does_not_depend_on_chunking(chunk_size: int) -> None:
    features = _features(2)
    reference = knn_graph(features, K, chunk_size=NUM_ITEMS).to_dense()
    assert torch.allclose(knn_graph(features, K, chunk_size=chunk_size).to_dense(), reference, atol=1e-6)


@pytest.mark.parametrize(("chunk_size", "column_tile"), [(4, 1), (4, 3), (5, 6), (NUM_ITEMS, 2), (1, NUM_ITEMS)])
def test_column_tiles_merge_into_the_same_neighbours(chunk_size: int, column_tile: int) -> None:
    features = _features(4)
    features[[2, 11]] = 0.0  # missing rows inside tiles: masked in every tile, never anyone's neighbour
    index, values = knn_edges(features, K, chunk_size=chunk_size, column_tile=column_tile)
    reference_index, reference_values = knn_edges(features, K, chunk_size=NUM_ITEMS, column_tile=NUM_ITEMS)
    assert torch.equal(index, reference_index) and torch.allclose(values, reference_values, atol=1e-6)
    assert not torch.isin(index, torch.tensor([2, 11])).any() and (index[0] != index[1]).all()


@pytest.mark.slow  # many blocks against brute force
@pytest.mark.parametrize(("similarity", "shrink"), [("cosine", 0.0), ("cosine", 2.0), ("dot", 0.0)])
def test_many_blocks_match_brute_force(similarity: str, shrink: float) -> None:
    """600 items in 32-row chunks x 48-column tiles: each pair is computed once, above the diagonal, and offered
    to both items; later chunks offer only the columns whose k-th best they beat."""
    features = torch.randn(600, 8, generator=torch.Generator().manual_seed(7))
    features[[5, 100, 599]] = 0.0
    adj = knn_graph(features, 6, chunk_size=32, similarity=similarity, shrink=shrink)
    expected = _brute_force(features, 6, shrink, similarity)
    tiled = torch.sparse_coo_tensor(*knn_edges(features, 6, chunk_size=32, column_tile=48, similarity=similarity,
                                               shrink=shrink), (600, 600), check_invariants=True).coalesce()
    assert torch.equal(tiled.indices(), adj.indices())
    assert torch.allclose(adj.to_dense(), expected, atol=1e-5)
    assert torch.equal(torch.bincount(adj.indices()[0], minlength=600)[[5, 100, 599]], torch.zeros(3, dtype=torch.long))


@pytest.mark.parametrize(("similarity", "shrink"), [("cosine", 0.0), ("cosine", 2.0), ("dot", 0.0)])
@pytest.mark.parametrize(("chunk_size", "column_tile"), [(NUM_ITEMS, NUM_ITEMS), (4, 3), (1, 5)])
def test_include_self_is_the_top_k_of_the_whole_row(similarity: str, shrink: float, chunk_size: int,
                                                      column_tile: int) -> None:
    """MMRec's dense topk keeps the diagonal: with ``include_self`` the item competes with its own similarity
    (cosine: 1, so it is its own first neighbour), missing rows still get nothing, and k may reach I."""
    features = _features(9)
    features[[3, 17]] = 0.0
    index, values = knn_edges(features, K, chunk_size=chunk_size, column_tile=column_tile, similarity=similarity,
                              shrink=shrink, include_self=True)
    adj = torch.sparse_coo_tensor(index, values, (NUM_ITEMS, NUM_ITEMS), check_invariants=True).to_dense()
    assert torch.allclose(adj, _brute_force(features, K, shrink, similarity, include_self=True), atol=1e-5)
    assert not torch.isin(index, torch.tensor([3, 17])).any()
    if similarity == "cosine" and shrink == 0:
        present = valid_rows(features)
        assert torch.equal(index[1].view(-1, K)[:, 0], torch.arange(NUM_ITEMS)[present])  # itself first
        assert torch.allclose(values.view(-1, K)[:, 0], torch.ones(int(present.sum())))
    every = knn_graph(_features(10)[:5], 10, include_self=True)  # k above I: all I items, itself included
    assert torch.equal(torch.bincount(every.indices()[0], minlength=5), torch.full((5,), 5))
    spec = KNNSpec(k=K, binary=True, normalization="sym", include_self=True)
    assert torch.allclose(spec.build(features).to_dense(),
                          normalize_graph(knn_graph(features, K, include_self=True), "sym", binary=True).to_dense())


def test_missing_items_get_no_neighbours_and_are_nobodys_neighbour() -> None:
    features = _features(3)
    missing = torch.tensor([0, 7, 8])
    features[missing] = 0.0
    adj = knn_graph(features, K, chunk_size=4)
    index, values = adj.indices(), adj.values()

    assert torch.isfinite(values).all()
    gone = missing
    assert not torch.isin(index, gone).any()
    assert torch.equal(valid_rows(features), ~torch.isin(torch.arange(NUM_ITEMS), gone))
    present = ~torch.isin(torch.arange(NUM_ITEMS), gone)
    assert (torch.bincount(index[0], minlength=NUM_ITEMS)[present] == K).all()
    for normalization in ("sym", "row"):
        normed = normalize_graph(adj, normalization, binary=True)
        assert torch.isfinite(normed.values()).all()


@pytest.mark.parametrize("scale", [1e30, 1e-30, "near float32 max", "subnormal"])
@pytest.mark.parametrize("shrink", [0.0, 10.0])
def test_cosine_neighbours_do_not_depend_on_the_features_scale(scale: float | str, shrink: float) -> None:
    """Cosine is scale-invariant, so rows of 1e30 (whose float32 squares overflow) or 1e-30 (underflow) keep
    their neighbours instead of all looking missing; a zero row still is missing. With shrink, the reference is
    the float64 formula on the scaled rows."""
    features = _features(5)
    features[[3, 17]] = 0.0
    if scale == "near float32 max":
        scaled = features / features.abs().amax(1, keepdim=True).clamp_min(1e-30) * 3e38
    elif scale == "subnormal":
        scaled = features / features.abs().amax(1, keepdim=True).clamp_min(1e-30) * 1e-40
    else:
        scaled = features * scale
    assert torch.isfinite(scaled).all() and torch.equal(valid_rows(scaled), valid_rows(features))
    index, values = knn_edges(scaled, K, chunk_size=5, shrink=shrink)
    if shrink == 0:
        reference_index, reference_values = knn_edges(features, K, chunk_size=5)
        assert torch.equal(index, reference_index)
        assert torch.allclose(values, reference_values, atol=1e-4 if scale == "subnormal" else 1e-6)
    else:
        expected = _brute_force(scaled.double(), K, shrink).float()
        adj = torch.sparse_coo_tensor(index, values, (NUM_ITEMS, NUM_ITEMS), check_invariants=True).to_dense()
        assert torch.allclose(adj, expected, atol=1e-6)
    assert not torch.isin(index, torch.tensor([3, 17])).any()
    assert torch.equal(torch.bincount(index[0], minlength=NUM_ITEMS) == K, valid_rows(features))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -float("inf")])
def test_a_non_finite_row_raises_naming_the_row_and_feature(value: float) -> None:
    features = _features(6)
    features[9, 2] = value
    with pytest.raises(ValueError, match=r"^feature 'image': row 9 has a NaN, an infinity .*rescale the feature"):
        KNNSpec(k=K).build(features, name="image")
    with pytest.raises(ValueError, match=r"^feature matrix: row 9 "):
        valid_rows(features)
    for similarity in ("cosine", "dot"):
        with pytest.raises(ValueError, match=r"row 9"):
            knn_edges(features, K, similarity=similarity)
    keep = torch.arange(NUM_ITEMS) != 9  # a caller that declares the row invalid gets a graph without it
    index, values = knn_edges(features, K, valid=keep)
    assert torch.isfinite(values).all() and not (index == 9).any()


def test_float64_rows_beyond_float32_and_overflowing_dot_products_raise() -> None:
    features = _features(7).double()
    features[4, 0] = 1e39  # finite in float64, inf once cast for the similarity
    with pytest.raises(ValueError, match=r"row 4 has a NaN, an infinity or a value beyond the float32 range"):
        knn_graph(features, K)
    large = _features(7) * 1e30  # cosine is fine (see above); a dot product of two such rows is 1e60
    with pytest.raises(ValueError, match=r"^feature 'text': row 0 has norm .* overflow float32.*rescale"):
        knn_edges(large, K, similarity="dot", name="text")


def test_row_norms_are_exact_at_any_scale_and_unit_rows_too() -> None:
    features = _features(8)
    features[5] = 0.0
    for scale in (1e30, 1e-30):
        ratio = row_norms(features * scale) / (features.double().norm(dim=1) * scale)
        assert torch.allclose(ratio[features.norm(dim=1) > 0], torch.ones(NUM_ITEMS - 1, dtype=torch.float64))
        x = (features * scale).requires_grad_()
        unit = unit_rows(x)
        assert torch.allclose(unit, F.normalize(features, dim=1), atol=1e-6)
        assert torch.equal(unit[5], torch.zeros(DIM))
        (unit * torch.randn(NUM_ITEMS, DIM)).sum().backward()
        assert torch.isfinite(x.grad).all()


def test_all_missing_or_k_above_catalogue_size() -> None:
    assert knn_graph(torch.zeros(5, 3), 2)._nnz() == 0
    adj = knn_graph(torch.randn(4, 3), 10)  # at most I - 1 neighbours
    assert torch.equal(torch.bincount(adj.indices()[0], minlength=4), torch.full((4,), 3))


def test_normalisations() -> None:
    adj = knn_graph(_features(4), K)
    ones = torch.sparse_coo_tensor(adj.indices(), torch.ones(adj._nnz()), adj.shape, check_invariants=True).to_dense()
    # FREEDOM: binary, D^-1/2 A D^-1/2 with D the row sums (k for every row here).
    assert torch.allclose(normalize_graph(adj, "sym", binary=True).to_dense(), ones / K)
    row = normalize_graph(adj, "row").to_dense()
    assert torch.allclose(row.sum(1), torch.ones(NUM_ITEMS))
    dense, degree = adj.to_dense(), adj.to_dense().sum(1)
    expected = dense / degree.sqrt()[:, None] / degree.sqrt()[None, :]
    assert torch.allclose(normalize_graph(adj, "sym").to_dense(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="normalization must be one of"):
        normalize_graph(adj, "left")


def test_combine_graphs_is_the_weighted_sum() -> None:
    a, b = knn_graph(_features(5), K), knn_graph(_features(6), K)
    combined = combine_graphs([a, b], [0.1, 0.9])
    assert torch.allclose(combined.to_dense(), 0.1 * a.to_dense() + 0.9 * b.to_dense())


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="similarity"):
        KNNSpec(k=3, similarity="euclid")
    with pytest.raises(ValueError, match="k must be"):
        KNNSpec(k=0)


def test_cache_hits_on_equal_content_and_misses_on_any_change(tmp_path: Path,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    builds = []
    real_knn_graph = graph_module.knn_graph
    monkeypatch.setattr(graph_module, "knn_graph", lambda *a, **kw: builds.append(1) or real_knn_graph(*a, **kw))
    features, spec = _features(7), KNNSpec(k=K, binary=True, normalization="sym")

    first = cached_knn_graph(features, spec, cache_dir=tmp_path)
    again = cached_knn_graph(features.clone(), spec, cache_dir=tmp_path)  # same bytes, another tensor
    assert len(builds) == 1 and len(list(tmp_path.glob("knn-*.pt"))) == 1
    assert torch.equal(first.indices(), again.indices()) and torch.equal(first.values(), again.values())
    assert torch.allclose(first.to_dense(), normalize_graph(real_knn_graph(features, K), "sym", binary=True).to_dense())

    changed = features.clone()
    changed[3, 1] += 1e-3
    for other_features, other_spec in [(changed, spec), (features, KNNSpec(k=K + 1, binary=True, normalization="sym")),
                                       (features, KNNSpec(k=K, binary=True, normalization="row")),
                                       (features, KNNSpec(k=K, similarity="dot", binary=True, normalization="sym")),
                                       (features.double(), spec)]:
        assert cache_key(other_features, other_spec) != cache_key(features, spec)
        cached_knn_graph(other_features, other_spec, cache_dir=tmp_path)
    assert len(builds) == 6 and len(list(tmp_path.glob("knn-*.pt"))) == 6
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, no leftovers
    cached_knn_graph(features, spec, cache_dir=None)  # no directory: built in memory, nothing written
    assert len(builds) == 7 and len(list(tmp_path.iterdir())) == 6


def test_cache_keys_tell_self_loops_apart(tmp_path: Path) -> None:
    features = _features(7)
    plain, with_self = KNNSpec(k=K, normalization="sym"), KNNSpec(k=K, normalization="sym", include_self=True)
    assert cache_key(features, plain) != cache_key(features, with_self)
    first = cached_knn_graph(features, plain, cache_dir=tmp_path)
    second = cached_knn_graph(features, with_self, cache_dir=tmp_path)
    assert len(list(tmp_path.glob("knn-*.pt"))) == 2
    assert (first.indices()[0] != first.indices()[1]).all() and (second.indices()[0] == second.indices()[1]).any()


def test_unreadable_cache_file_is_rebuilt(tmp_path: Path) -> None:
    features, spec = _features(8), KNNSpec(k=K)
    path = tmp_path / f"knn-{cache_key(features, spec)}.pt"
    path.write_bytes(b"truncated")
    graph = cached_knn_graph(features, spec, cache_dir=tmp_path)
    assert torch.allclose(graph.to_dense(), knn_graph(features, K).to_dense())
    assert torch.allclose(cached_knn_graph(features, spec, cache_dir=tmp_path).to_dense(), graph.to_dense())


def test_train_graph_views_agree() -> None:
    graph = TrainGraph(3, 4, users=torch.tensor([0, 0, 1, 2]), items=torch.tensor([1, 3, 3, 0]))
    dense = torch.zeros(3, 4)
    dense[graph.users, graph.items] = 1.0
    assert torch.equal(graph.interactions().to_dense(), dense)
    assert torch.equal(graph.interactions(transpose=True).to_dense(), dense.T)
    binary = graph.adjacency("none").to_dense()
    assert torch.equal(binary[:3, 3:], dense) and torch.equal(binary, binary.T)
    assert torch.equal(graph.degrees(), binary.sum(1))
    history = graph.user_items()
    assert torch.equal(history.sparse(torch.tensor([1, 0])).to_dense(), dense[[1, 0]])
    assert torch.allclose(history.sparse(torch.tensor([0]), mean=True).to_dense(), dense[[0]] / 2)


def test_row_normalised_adjacency_with_self_loops_and_its_transpose() -> None:
    """MMRec LATTICE's user-item graph: (D + I)^-1 (A + I), each node's mean over its neighbours and itself."""
    graph = TrainGraph(3, 4, users=torch.tensor([0, 0, 1, 2, 2]), items=torch.tensor([1, 3, 3, 0, 3]))
    binary = torch.zeros(7, 7)
    binary[graph.users, graph.items + 3] = 1.0
    binary = binary + binary.T + torch.eye(7)
    expected = binary / binary.sum(1, keepdim=True)
    adj = graph.adjacency("row_self_loops")
    assert torch.allclose(adj.to_dense(), expected) and not torch.allclose(expected, expected.T)
    assert torch.allclose(graph.adjacency("row_self_loops", transpose=True).to_dense(), expected.T)
    assert graph.adjacency("sym", transpose=True) is graph.norm_adj()  # symmetric: the same matrix
    with pytest.raises(ValueError, match="adjacency normalization must be one of"):
        graph.adjacency("row")


def test_csr_of_row_major_is_to_csr_of_any_subset_of_a_csr_matrix() -> None:
    """Entries taken in stored order from a CSR matrix, any subset, give the matrix to_csr builds by sorting."""
    generator = torch.Generator().manual_seed(0)
    dense = torch.rand(7, 5, generator=generator) * (torch.rand(7, 5, generator=generator) < 0.5)
    entries = dense.to_sparse_coo().coalesce()
    kept = torch.rand(entries.values().shape, generator=generator) < 0.6
    (rows, cols), values = entries.indices()[:, kept], entries.values()[kept]
    expected = to_csr(torch.sparse_coo_tensor(torch.stack([rows, cols]), values, (7, 5), check_invariants=True))
    built = csr_of_row_major(rows, cols, values, (7, 5))
    for part in ("crow_indices", "col_indices", "values"):
        assert torch.equal(getattr(built, part)(), getattr(expected, part)()), part
    assert built.layout == torch.sparse_csr
