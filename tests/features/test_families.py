"""Every LVLM family rmm supports, each as a tiny offline model loaded through the hub code path."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from rmm.features.lvlm import POOLINGS, LVLMDescriber, LVLMEmbedder
from rmm.features.prompts import load_describe_template
from tests.features.helpers import draw_item
from tests.features.tiny_builders import TEST_ARCHS

FAMILIES = {  # tiny arch -> (processor class, model class)
    "qwen2-vl": ("Qwen2VLProcessor", "Qwen2VLForConditionalGeneration"),
    "qwen2.5-vl": ("Qwen2_5_VLProcessor", "Qwen2_5_VLForConditionalGeneration"),
    "llava": ("LlavaProcessor", "LlavaForConditionalGeneration"),
    "llava-next": ("LlavaNextProcessor", "LlavaNextForConditionalGeneration"),
    "smolvlm": ("Idefics3Processor", "Idefics3ForConditionalGeneration"),
}
TITLES = ["red circle", "blue square", "green circle", ""]
TEXTS = ["A red circle on white.", "A blue square.", "", ""]


def test_every_tiny_lvlm_family_is_tested() -> None:
    assert set(FAMILIES) == {"qwen2-vl", *TEST_ARCHS}


def _images() -> list[np.ndarray | None]:
    return [draw_item("red", "circle"), None, draw_item("green", "circle", size=40)[:, :30],
            draw_item("yellow", "square", size=48)]


@pytest.mark.parametrize("arch", list(FAMILIES))
def test_family_embeds_with_every_pooling_and_generates(arch: str, tiny_model: Callable[[str], str]) -> None:
    path = tiny_model(arch)
    embedder = LVLMEmbedder(path, poolings=POOLINGS)
    assert (type(embedder.processor).__name__, type(embedder.model).__name__) == FAMILIES[arch]
    assert sum(p.numel() for p in embedder.model.parameters()) < 300_000
    vectors = embedder.embed(TITLES, TEXTS, _images())
    for pooling in POOLINGS:
        assert vectors[pooling].shape == (4, embedder.dim) and vectors[pooling].dtype == np.float32, pooling
        assert np.isfinite(vectors[pooling]).all(), pooling
    assert not np.allclose(vectors["image_mean"][0], vectors["text_mean"][0])
    np.testing.assert_allclose(vectors["image_mean"][1], vectors["mean"][1])  # no image: falls back to mean
    alone = embedder.embed(TITLES[1:2], TEXTS[1:2], _images()[1:2])
    np.testing.assert_allclose(alone["last"][0], vectors["last"][1], atol=1e-4)  # padding does not leak
    with_image, without = embedder.input_lengths(["a red circle"] * 2, [_images()[0], None])
    assert with_image > without > 0

    describer = LVLMDescriber(path, template=load_describe_template("baby"), max_new_tokens=4)
    assert describer.model is embedder.model  # loaded once per process
    texts = describer.describe(TITLES, TEXTS, _images())
    assert len(texts) == 4 and all(isinstance(text, str) for text in texts)


def test_sampled_decoding_is_seeded(tiny_qwen2_vl: str) -> None:
    template = load_describe_template("pets")
    sampler = LVLMDescriber(tiny_qwen2_vl, template=template, max_new_tokens=6, do_sample=True, temperature=1.5,
                            seed=7)
    first = sampler.describe(TITLES[:2], TEXTS[:2], _images()[:2])
    assert first == sampler.describe(TITLES[:2], TEXTS[:2], _images()[:2])
    greedy = LVLMDescriber(tiny_qwen2_vl, template=template, max_new_tokens=6)
    assert greedy.generation["do_sample"] is False and "temperature" not in {
        k for k, v in greedy.generation.items() if v is not None}
