from __future__ import annotations

import numpy as np

from rmm.features.encoders import IMAGE_STATS_DIM, SentenceEncoder, image_stats, resolve_sentence_model
from tests.features.helpers import draw_item


def test_image_stats_separates_colours_and_shapes() -> None:
    red_circle, red_square = image_stats(draw_item("red", "circle")), image_stats(draw_item("red", "square"))
    blue_circle = image_stats(draw_item("blue", "circle"))
    small_red_circle = image_stats(draw_item("red", "circle", size=40))
    for vector in (red_circle, red_square, blue_circle):
        assert vector.shape == (IMAGE_STATS_DIM,) and vector.dtype == np.float32
        assert np.isclose(np.linalg.norm(vector), 1.0, atol=1e-5)
    assert red_circle @ small_red_circle > red_circle @ red_square > red_circle @ blue_circle
    assert red_square @ red_circle > red_square @ blue_circle


def test_sentence_encoder_gives_normalised_384d_vectors() -> None:
    encoder = SentenceEncoder("minilm")
    vectors = encoder.encode(["red leather shoe", "crimson leather boot", "quantum field theory"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


def test_sentence_model_aliases() -> None:
    local = resolve_sentence_model(None)
    assert resolve_sentence_model("minilm") == resolve_sentence_model("all-MiniLM-L6-v2") == local
    assert resolve_sentence_model("BAAI/bge-small-en") == "BAAI/bge-small-en"
