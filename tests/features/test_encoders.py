from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rmm.features.encoders import (
    IMAGE_STATS_DIM,
    SentenceEncoder,
    image_stats,
    resolve_sentence_model,
    sentence_model_label,
)
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


@pytest.mark.slow  # loads MiniLM
def test_sentence_encoder_gives_normalised_384d_vectors() -> None:
    encoder = SentenceEncoder("minilm")
    vectors = encoder.encode(["red leather shoe", "crimson leather boot", "quantum field theory"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2]


@pytest.mark.slow  # loads MiniLM
def test_sentence_encoder_batches_by_tokens_and_keeps_each_text_s_vector() -> None:
    encoder = SentenceEncoder("minilm", batch_size=2)
    texts = ["a b c d e f g h i j", "antidisestablishmentarianism", "shoe", "red leather shoe with laces", "x y"]
    counts = encoder.token_counts(texts)
    # [CLS] ... [SEP]: one token per short word, several for a long rare one; not the order of characters
    assert counts[0] == 12 and counts[2] == 3 and counts[4] == 4
    assert counts[1] > 3 and len(texts[1]) > len(texts[0]) and counts[1] < counts[0]
    alone = np.concatenate([encoder.encode([text]) for text in texts])
    np.testing.assert_allclose(encoder.encode(texts), alone, atol=1e-5)


def test_sentence_model_aliases() -> None:
    local = resolve_sentence_model(None)
    assert resolve_sentence_model("minilm") == resolve_sentence_model("all-MiniLM-L6-v2") == local
    assert resolve_sentence_model("BAAI/bge-small-en") == "BAAI/bge-small-en"
    assert sentence_model_label(None) == sentence_model_label("all-MiniLM-L6-v2") == "minilm"
    assert sentence_model_label("BAAI/bge_small_en/") == "bge-small-en"


@pytest.mark.slow  # builds ResNet50
def test_resnet50_random_and_local_weights_give_2048d(tmp_path: Path) -> None:
    import torch

    from rmm.features.encoders import TorchvisionImageEncoder, center_square, load_torchvision

    images = [draw_item("red", "circle"), draw_item("blue", "square", size=40)[:, :25]]
    assert center_square(images[1], 32).shape == (32, 32, 3)
    random = TorchvisionImageEncoder("resnet50", None, image_size=32)
    vectors = random.encode(images)
    assert random.dim == 2048 and vectors.shape == (2, 2048) and np.isfinite(vectors).all()
    assert not np.allclose(vectors[0], vectors[1])
    weights = tmp_path / "resnet50.pth"  # the real-weights path: same code, a state dict of the architecture
    head = {"fc.weight": torch.zeros(1000, 2048), "fc.bias": torch.zeros(1000)}
    torch.save({**random.net.state_dict(), **head}, weights)
    loaded = TorchvisionImageEncoder("resnet50", str(weights), image_size=32)
    assert loaded.net is not random.net
    np.testing.assert_allclose(loaded.encode(images), vectors, rtol=1e-5, atol=1e-5)
    torch.manual_seed(123)  # "random" weights are seeded: any process builds the same network
    fresh = load_torchvision("resnet50", None)
    assert all(torch.equal(a, b)
               for a, b in zip(fresh.state_dict().values(), random.net.state_dict().values(), strict=True))
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        load_torchvision("resnet50", "IMAGENET_BEST")


def test_tiny_vit_and_clip_towers(tiny_model: Callable[[str], str]) -> None:
    from rmm.features.encoders import CLIPEncoder, ViTImageEncoder

    images = [draw_item("red", "circle"), draw_item("green", "square", size=48)]
    for pooling in ("cls", "mean"):
        vit = ViTImageEncoder(tiny_model("vit"), pooling=pooling)
        vectors = vit.encode(images)
        assert vectors.shape == (2, 32) and np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    clip = CLIPEncoder(tiny_model("clip"))
    assert CLIPEncoder(tiny_model("clip")).model is clip.model  # one load per process
    image, text = clip.encode_images(images), clip.encode_texts(["red circle", "a green square " * 40])
    assert image.shape == text.shape == (2, 16)
    np.testing.assert_allclose(np.linalg.norm(np.concatenate([image, text]), axis=1), 1.0, atol=1e-5)
    short, long = clip.token_counts(["red circle", "a green square " * 40])  # the sort keys: truncated tokens
    assert 2 < short < long == clip.max_length
