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
def embedder(tiny_qwen2_vl: str) -> LVLMEmbedder:
    return LVLMEmbedder(tiny_qwen2_vl, poolings=POOLINGS)


def test_each_pooling_gives_finite_distinct_vectors_from_one_forward(embedder: LVLMEmbedder) -> None:
    vectors = embedder.embed(TITLES, TEXTS, _images())
    assert set(vectors) == set(POOLINGS)
    for pooling, matrix in vectors.items():
        assert matrix.shape == (3, embedder.dim) and matrix.dtype == np.float32
        assert np.isfinite(matrix).all(), pooling
    for a in POOLINGS:
        for b in POOLINGS:
            if a < b:
                assert not np.allclose(vectors[a], vectors[b]), (a, b)


def test_embedding_is_deterministic_and_independent_of_batch(embedder: LVLMEmbedder) -> None:
    batch = embedder.embed(TITLES, TEXTS, _images())
    again = embedder.embed(TITLES, TEXTS, _images())
    alone = [embedder.embed([t], [x], [i]) for t, x, i in zip(TITLES, TEXTS, _images(), strict=True)]
    for pooling in POOLINGS:
        np.testing.assert_array_equal(batch[pooling], again[pooling])
        np.testing.assert_allclose(batch[pooling], np.concatenate([a[pooling] for a in alone]), atol=1e-4)


def test_image_changes_the_embedding(embedder: LVLMEmbedder) -> None:
    red, blue = draw_item("red", "circle"), draw_item("blue", "circle")
    vectors = embedder.embed(["circle", "circle"], ["", ""], [red, blue])["image_mean"]
    assert not np.allclose(vectors[0], vectors[1])


def test_layer_out_of_range_and_model_loaded_once(tiny_qwen2_vl: str, embedder: LVLMEmbedder) -> None:
    with pytest.raises(ValueError, match="hidden states"):
        LVLMEmbedder(tiny_qwen2_vl, layer=3)
    other = LVLMEmbedder(tiny_qwen2_vl, layer=-3)
    assert other.model is embedder.model  # one load per process and (path, dtype, attention, device)
    assert other.embed(["a"], ["b"], [None])["mean"].shape == (1, 64)


def test_chat_prompts_rendered_once_per_shape_equal_the_template(embedder: LVLMEmbedder) -> None:
    from rmm.features.prompts import build_messages

    slow = [embedder.processor.apply_chat_template(build_messages(embedder.template, t, x, i is not None),
                                                   tokenize=False, add_generation_prompt=True)
            for t, x, i in zip(TITLES * 2, ["{{ x }}", "50% off", "a\\nb", "", "  ", "é"], _images() * 2, strict=True)]
    fast = embedder.prompts(TITLES * 2, ["{{ x }}", "50% off", "a\\nb", "", "  ", "é"],
                            [i is not None for i in _images() * 2])
    assert fast == slow and len(embedder._shapes) == 2  # with and without an image
