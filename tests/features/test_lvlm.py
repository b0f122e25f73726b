from __future__ import annotations

import numpy as np
import pytest
import torch

from rmm.features.lvlm import POOLINGS, LVLMEmbedder, pool_hidden
from tests.features.helpers import draw_item

TITLES = ["red circle", "blue square", "green circle"]
TEXTS = ["A red circle.", "A blue square.", ""]


def _images() -> list[np.ndarray | None]:
    return [draw_item("red", "circle"), None, draw_item("green", "circle", size=40)]


def test_pool_hidden_by_hand() -> None:
    hidden = torch.arange(8, dtype=torch.float32).reshape(1, 4, 2)  # tokens [0,1] [2,3] [4,5] [6,7]
    mask = torch.tensor([[1, 1, 1, 0]])
    image = torch.tensor([[False, True, True, False]])
    assert pool_hidden(hidden, mask, image, "mean").tolist() == [[2.0, 3.0]]
    assert pool_hidden(hidden, mask, image, "image_mean").tolist() == [[3.0, 4.0]]
    assert pool_hidden(hidden, mask, image, "text_mean").tolist() == [[0.0, 1.0]]
    assert pool_hidden(hidden, mask, image, "last").tolist() == [[4.0, 5.0]]
    left = torch.tensor([[0, 1, 1, 1]])
    assert pool_hidden(hidden, left, image, "last").tolist() == [[6.0, 7.0]]
    no_image = torch.zeros(1, 4, dtype=torch.bool)
    assert pool_hidden(hidden, mask, no_image, "image_mean").tolist() == [[2.0, 3.0]]  # falls back to mean
    with pytest.raises(ValueError, match="valid poolings"):
        pool_hidden(hidden, mask, image, "max")


@pytest.fixture(scope="module")
def embedders(tiny_qwen2_vl: str) -> dict[str, LVLMEmbedder]:
    return {pooling: LVLMEmbedder(tiny_qwen2_vl, pooling=pooling) for pooling in POOLINGS}


def test_each_pooling_gives_finite_distinct_vectors(embedders: dict[str, LVLMEmbedder]) -> None:
    vectors = {p: e.embed(TITLES, TEXTS, _images()) for p, e in embedders.items()}
    for pooling, matrix in vectors.items():
        assert matrix.shape == (3, embedders[pooling].dim) and matrix.dtype == np.float32
        assert np.isfinite(matrix).all(), pooling
    for a in POOLINGS:
        for b in POOLINGS:
            if a < b:
                assert not np.allclose(vectors[a], vectors[b]), (a, b)


def test_embedding_is_deterministic_and_independent_of_batch(embedders: dict[str, LVLMEmbedder]) -> None:
    embedder = embedders["mean"]
    batch = embedder.embed(TITLES, TEXTS, _images())
    np.testing.assert_array_equal(batch, embedder.embed(TITLES, TEXTS, _images()))
    alone = np.concatenate([embedder.embed([t], [x], [i]) for t, x, i in zip(TITLES, TEXTS, _images())])
    np.testing.assert_allclose(batch, alone, atol=1e-4)


def test_image_changes_the_embedding(embedders: dict[str, LVLMEmbedder]) -> None:
    embedder = embedders["image_mean"]
    red, blue = draw_item("red", "circle"), draw_item("blue", "circle")
    vectors = embedder.embed(["circle", "circle"], ["", ""], [red, blue])
    assert not np.allclose(vectors[0], vectors[1])


def test_layer_out_of_range(tiny_qwen2_vl: str) -> None:
    with pytest.raises(ValueError, match="hidden states"):
        LVLMEmbedder(tiny_qwen2_vl, layer=3)
    assert LVLMEmbedder(tiny_qwen2_vl, layer=-3).embed(["a"], ["b"], [None]).shape == (1, 64)
