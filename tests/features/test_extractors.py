from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rmm.config import (
    ExtractorConfig,
    ImageStatsConfig,
    LVLMDescribeConfig,
    LVLMEmbedConfig,
    SentenceConfig,
    TorchvisionConfig,
    ViTConfig,
)
from rmm.features.encoders import SentenceEncoder, sentence_text
from rmm.features.extractors import (
    EXTRACTORS,
    FAILED,
    Extractor,
    Item,
    decode_images,
    get_extractor,
    items_from_batch,
)
from tests.features.helpers import CORRUPT_ITEM, EMPTY_TEXT_ITEM, NO_IMAGE_ITEM, make_dataset


def _batch(root: Path, max_image_size: int = 224) -> dict[str, np.ndarray]:
    items = pd.read_parquet(root / "items.parquet")
    raw = {c: items[c].to_numpy(dtype=object if c != "item_id" else np.int64)
           for c in ("item_id", "title", "text", "image_path")}
    return decode_images(raw, str(root), max_image_size)


def test_registry_has_every_kind_and_names_them_on_error() -> None:
    assert set(EXTRACTORS) >= {"lvlm_embed", "lvlm_describe", "sentence", "image_stats", "torchvision", "vit",
                               "clip_image", "clip_text"}
    with pytest.raises(KeyError, match="clip_image.*image_stats.*lvlm_embed.*sentence"):
        get_extractor("resnet")


def test_decode_images_records_reasons_and_resizes(tmp_path: Path) -> None:
    root = make_dataset(tmp_path / "data", num_items=10)
    items = items_from_batch(_batch(root, max_image_size=32))
    assert items[CORRUPT_ITEM].image is None and "unreadable image" in items[CORRUPT_ITEM].image_reason
    assert items[NO_IMAGE_ITEM].image is None and items[NO_IMAGE_ITEM].image_reason == "no image"
    assert items[0].image.shape == (32, 32, 3) and items[0].image_reason == ""
    assert not items[EMPTY_TEXT_ITEM].has_text and items[0].title == "red circle"


@pytest.mark.slow  # loads MiniLM
def test_image_stats_and_sentence_extractors_mark_missing_inputs(tmp_path: Path) -> None:
    batch = _batch(make_dataset(tmp_path / "data", num_items=10))
    stats = get_extractor("image_stats")(ImageStatsConfig(name="img"))(batch)["img"]
    assert stats["vector"].shape == (10, stats["vector"].shape[1])
    assert stats["status"][CORRUPT_ITEM] == "missing" and "unreadable" in stats["reason"][CORRUPT_ITEM]
    assert stats["status"][NO_IMAGE_ITEM] == "missing"
    assert not stats["vector"][CORRUPT_ITEM].any()
    text = get_extractor("sentence")(SentenceConfig(name="txt"))(batch)["txt"]
    assert text["vector"].shape == (10, 384)
    assert text["status"][EMPTY_TEXT_ITEM] == "missing" and text["status"][CORRUPT_ITEM] == "done"


class _Fragile(Extractor):
    """Encodes item ids as vectors (two outputs) and raises on item 2, to check failure isolation; sorts items by
    descending title length to check that bucketing restores the order."""

    def __init__(self, cfg: ExtractorConfig, cache_dir: str | None = None) -> None:
        super().__init__(cfg, cache_dir)
        self.dims = {"f_a": 2, "f_b": 1}
        self.batches: list[list[int]] = []

    @classmethod
    def output_names(cls, cfg: ExtractorConfig) -> tuple[str, ...]:
        return ("f_a", "f_b")

    @classmethod
    def describe(cls, cfg: ExtractorConfig, cache_dir: str | None = None) -> dict:
        return {}

    def sort_keys(self, items: list[Item]) -> list[int]:
        return [-len(item.title) for item in items]

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        self.batches.append([item.item_id for item in items])
        if any(item.item_id == 2 for item in items):
            raise RuntimeError("cannot encode item 2")
        return {"f_a": np.array([[item.item_id, 1.0] for item in items]),
                "f_b": np.array([[10.0 * item.item_id] for item in items])}


def test_an_item_that_raises_fails_alone_and_buckets_keep_row_order() -> None:
    batch = {"item_id": np.arange(5), "title": np.array(["a", "bbb", "c", "dddd", "ee"], dtype=object),
             "text": np.array([""] * 5, dtype=object), "todo/fragile:f": np.array([True, True, True, True, False])}
    extractor = _Fragile(ExtractorConfig(name="f", kind="fragile", batch_size=2))
    out = extractor(batch)
    assert extractor.batches[:2] == [[3, 1], [0, 2]]  # longest first, then item by item after the failure
    for name in ("f_a", "f_b"):
        assert out[name]["status"].tolist() == ["done", "done", FAILED, "done", "skipped"]
        assert out[name]["reason"][2] == "RuntimeError: cannot encode item 2"
    np.testing.assert_array_equal(out["f_a"]["vector"], [[0, 1], [1, 1], [0, 0], [3, 1], [0, 0]])
    np.testing.assert_array_equal(out["f_b"]["vector"][:, 0], [0, 10, 0, 30, 0])


class _TwoPass(_Fragile):
    """:class:`_Fragile` whose ``f_b`` comes from :meth:`second_pass` (from a ``note`` that :meth:`encode` returns),
    once per batch, which raises on item 3."""

    extra_columns = ("note",)

    def __init__(self, cfg: ExtractorConfig, cache_dir: str | None = None) -> None:
        super().__init__(cfg, cache_dir)
        self.second_pass_outputs = ("f_b",)
        self.second_pass_calls: list[list[int]] = []

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        encoded = super().encode(items)
        return {"f_a": encoded["f_a"], "note": np.array([f"n{item.item_id}" for item in items], dtype=object)}

    def second_pass(self, items: list[Item], encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self.second_pass_calls.append([item.item_id for item in items])
        if any(item.item_id == 3 for item in items):
            raise RuntimeError("no second pass for item 3")
        return {"f_b": np.array([[10.0 * int(note[1:])] for note in encoded["note"]])}


def test_second_pass_runs_once_per_batch_on_encoded_items_and_fails_items_alone() -> None:
    batch = {"item_id": np.arange(5), "title": np.array(["a", "bbb", "c", "dddd", "ee"], dtype=object),
             "text": np.array([""] * 5, dtype=object), "todo/fragile:f": np.array([True, True, True, True, False])}
    extractor = _TwoPass(ExtractorConfig(name="f", kind="fragile", batch_size=2))
    out = extractor(batch)
    # one call over every item encode handled (not item 2, which failed there), then item by item
    assert extractor.second_pass_calls == [[3, 1, 0], [3], [1], [0]]
    for name in ("f_a", "f_b"):
        assert out[name]["status"].tolist() == ["done", "done", FAILED, FAILED, "skipped"]
    assert out["f_a"]["reason"][3] == "RuntimeError: no second pass for item 3"
    np.testing.assert_array_equal(out["f_a"]["vector"], [[0, 1], [1, 1], [0, 0], [0, 0], [0, 0]])  # 3's row cleared
    np.testing.assert_array_equal(out["f_b"]["vector"][:, 0], [0, 10, 0, 0, 0])
    assert out["f_a"]["note"].tolist() == ["n0", "n1", "", "", ""]


def test_lvlm_extractor_notes_partial_inputs(tmp_path: Path, tiny_qwen2_vl: str) -> None:
    batch = _batch(make_dataset(tmp_path / "data", num_items=8))
    cfg = LVLMEmbedConfig(name="lvlm", model="tiny:qwen2-vl", pooling="image_mean")
    info = get_extractor("lvlm_embed").describe(cfg)
    assert info["model_path"] == tiny_qwen2_vl and len(info["prompt_sha256"]) == 64
    out = get_extractor("lvlm_embed")(cfg)(batch)["lvlm"]
    assert out["vector"].shape == (8, 64) and np.isfinite(out["vector"]).all()
    assert set(out["status"]) == {"done"}
    assert out["reason"][NO_IMAGE_ITEM] == "text only (no image); image_mean pooled all tokens"
    assert out["reason"][CORRUPT_ITEM].startswith("text only (unreadable image")
    assert out["reason"][EMPTY_TEXT_ITEM] == "image only (empty title and text)"


@pytest.mark.slow  # loads MiniLM
def test_describe_embeds_each_answer_whatever_batch_it_came_in(tmp_path: Path, tiny_qwen2_vl: str) -> None:
    batch = _batch(make_dataset(tmp_path / "data", num_items=8))
    cfg = LVLMDescribeConfig(name="d", model="tiny:qwen2-vl", max_new_tokens=6, batch_size=3)
    out = get_extractor("lvlm_describe")(cfg)(batch)["d_desc_minilm"]
    assert set(out["status"]) == {"done"}
    items = items_from_batch(batch)
    inputs = [text or sentence_text(item.title, item.text) for text, item in zip(out["text"], items, strict=True)]
    alone = np.concatenate([SentenceEncoder().encode([text]) for text in inputs])  # each answer on its own
    np.testing.assert_allclose(out["vector"], alone, atol=1e-5)


def test_lvlm_config_errors_surface_in_describe() -> None:
    lvlm = get_extractor("lvlm_embed")
    with pytest.raises(ValueError, match="needs a model"):
        lvlm.describe(LVLMEmbedConfig(name="x"))
    with pytest.raises(ValueError, match="valid poolings"):
        lvlm.describe(LVLMEmbedConfig(name="x", model="m", pooling="cls"))
    with pytest.raises(KeyError, match="prompt template"):
        lvlm.describe(LVLMEmbedConfig(name="x", model="m", prompt="poem"))
    with pytest.raises(KeyError, match="describe template.*baby"):
        get_extractor("lvlm_describe").describe(LVLMDescribeConfig(name="x", model="m", prompt="poem"))
    with pytest.raises(ValueError, match="cls or mean"):  # checked when the config is made
        ViTConfig(name="x", model="m", pooling="last")
    with pytest.raises(ValueError, match="IMAGENET1K_V2"):
        get_extractor("torchvision").describe(TorchvisionConfig(name="x", weights="IMAGENET"))
    with pytest.raises(ValueError, match="unknown torchvision model"):
        get_extractor("torchvision").describe(TorchvisionConfig(name="x", model="resnet51"))


def test_failing_sort_keys_fall_back_to_input_order() -> None:
    class _BadKeys(_Fragile):
        def sort_keys(self, items: list[Item]) -> list[int]:
            raise RuntimeError("no tokenizer")

    batch = {"item_id": np.array([0, 1, 3]), "title": np.array(["a", "bbb", "c"], dtype=object),
             "text": np.array(["", "", ""], dtype=object)}
    extractor = _BadKeys(ExtractorConfig(name="f", kind="fragile", batch_size=8))
    out = extractor(batch)
    assert extractor.batches == [[0, 1, 3]] and out["f_a"]["status"].tolist() == ["done"] * 3
