"""Extractor registry and the batch contract between Ray Data and the encoders.

An extractor is a callable class that Ray Data runs in an actor pool (``map_batches(cls, ...)``): it loads its
model once in ``__init__`` and maps a numpy batch dict to ``{item_id, vector, status, reason}``. The batch
carries ``item_id``, ``title``, ``text`` and, for image extractors, the columns :func:`decode_images` adds
(raw RGB bytes + shape, so Arrow stores them natively). ``status`` is ``done``, ``missing`` (the item lacks
the input this extractor needs; zero row) or ``failed`` (encoding raised; zero row); ``reason`` says why, and on
a ``done`` row notes a partial input ("text only: no image"). Everything here runs without Ray.

torch and transformers are imported on first use: they cost seconds per Ray worker, and the image-decoding
tasks and ``image_stats``/``sentence`` actors never need ``rmm.features.lvlm``.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from PIL import Image

from rmm.config import ExtractorConfig
from rmm.features.encoders import (
    HSV_BINS,
    IMAGE_STATS_DIM,
    THUMBNAIL_SIZE,
    SentenceEncoder,
    image_stats,
    resolve_sentence_model,
    sentence_text,
)
from rmm.features.prompts import get_template, template_sha256, template_text
from rmm.features.tiny import resolve_model_id

log = logging.getLogger(__name__)

DONE, MISSING, FAILED = "done", "missing", "failed"
NO_IMAGE = "no image"

Batch = dict[str, np.ndarray]


@dataclass(frozen=True)
class Item:
    """One item as an extractor sees it; ``image_reason`` says why ``image`` is None."""

    item_id: int
    title: str
    text: str
    image: np.ndarray | None
    image_reason: str = ""

    @property
    def has_text(self) -> bool:
        return bool(self.title.strip() or self.text.strip())


# ------------------------------------------------------------------------------------------------- images

def load_image(dataset_dir: str | Path, image_path: str | None, max_image_size: int) -> tuple[np.ndarray | None, str]:
    """Decode one image as RGB, shrunk (aspect kept) so its longer side is at most ``max_image_size``.

    Returns:
        ``(pixels, "")``, or ``(None, reason)`` when there is no path or the file is missing or unreadable: a
        bad image must cost the item its image, never the job.
    """
    if not isinstance(image_path, str) or not image_path:  # None, or NaN from a pandas object column
        return None, NO_IMAGE
    path = Path(dataset_dir) / image_path
    try:
        with Image.open(path) as picture:
            picture = picture.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        log.warning("skipping image of %s: %s", path, err)
        return None, f"unreadable image {image_path}: {type(err).__name__}: {err}"
    picture.thumbnail((max_image_size, max_image_size))
    return np.asarray(picture, dtype=np.uint8), ""


def decode_images(batch: Batch, dataset_dir: str, max_image_size: int) -> Batch:
    """Replace ``image_path`` (relative to ``dataset_dir``) by ``image`` (raw RGB bytes or None),
    ``image_height``, ``image_width`` and ``image_reason``. A pure ``dict -> dict`` for a Ray Data CPU task."""
    size = len(batch["item_id"])
    data = np.empty(size, dtype=object)
    heights = np.zeros(size, dtype=np.int32)
    widths = np.zeros(size, dtype=np.int32)
    reasons = np.empty(size, dtype=object)
    for i, image_path in enumerate(batch["image_path"]):
        pixels, reasons[i] = load_image(dataset_dir, image_path, max_image_size)
        if pixels is not None:
            data[i] = pixels.tobytes()
            heights[i], widths[i] = pixels.shape[:2]
    rest = {key: value for key, value in batch.items() if key != "image_path"}
    return {**rest, "image": data, "image_height": heights, "image_width": widths, "image_reason": reasons}


def items_from_batch(batch: Mapping[str, np.ndarray]) -> list[Item]:
    """Rebuild :class:`Item` rows from a batch; without image columns every item is text-only."""
    items = []
    for i, item_id in enumerate(batch["item_id"]):
        image = None
        raw = batch["image"][i] if "image" in batch else None
        if raw is not None:
            shape = (int(batch["image_height"][i]), int(batch["image_width"][i]), 3)
            image = np.frombuffer(raw, dtype=np.uint8).reshape(shape)
        reason = _as_str(batch["image_reason"][i]) if "image_reason" in batch else NO_IMAGE
        items.append(Item(int(item_id), _as_str(batch["title"][i]), _as_str(batch["text"][i]), image, reason))
    return items


def _as_str(value: Any) -> str:
    return value if isinstance(value, str) else ""


# ---------------------------------------------------------------------------------------------- extractors

class Extractor(ABC):
    """Base of all extractors: per-item bookkeeping and failure isolation around :meth:`encode`.

    Args:
        cfg: this feature's config.
        cache_dir: cache root of ``tiny:`` models for extractors that load one; part of every extractor's
            constructor so the pipeline can pass it uniformly (an actor's environment may lack ``RMM_CACHE``).
    """

    kind: ClassVar[str]
    needs_image: ClassVar[bool] = False
    dim: int

    def __init__(self, cfg: ExtractorConfig, cache_dir: str | None = None) -> None:
        self.cfg = cfg

    @classmethod
    @abstractmethod
    def describe(cls, cfg: ExtractorConfig, cache_dir: str | None = None) -> dict[str, Any]:
        """Manifest fields (model, prompt, pooling, ...), computed on the driver without loading the model;
        raises ``ValueError``/``KeyError`` on an invalid config so a bad extractor fails before any work."""

    @abstractmethod
    def encode(self, items: list[Item]) -> np.ndarray:
        """Shapes: returns (len(items), dim) for items that passed :meth:`missing_reason`."""

    def missing_reason(self, item: Item) -> str:
        """Non-empty when the item lacks every input this extractor uses."""
        return "" if item.has_text else "empty title and text"

    def note(self, item: Item) -> str:
        """A remark on an item encoded from part of its inputs (kept in the manifest)."""
        return ""

    def device(self) -> str:
        """``cuda`` when this extractor was given a GPU and one is visible, else ``cpu``."""
        import torch

        return "cuda" if self.cfg.num_gpus > 0 and torch.cuda.is_available() else "cpu"

    def __call__(self, batch: Batch) -> Batch:
        items = items_from_batch(batch)
        vectors = np.zeros((len(items), self.dim), dtype=np.float32)
        status = np.full(len(items), DONE, dtype=object)
        reasons = np.array([self.note(item) for item in items], dtype=object)
        todo = []
        for i, item in enumerate(items):
            if why := self.missing_reason(item):
                status[i], reasons[i] = MISSING, why
            else:
                todo.append(i)
        if todo:
            encoded, errors = self._encode_isolated([items[i] for i in todo])
            vectors[todo] = encoded
            for i, error in zip(todo, errors):
                if error:
                    status[i], reasons[i] = FAILED, error
        return {"item_id": np.asarray(batch["item_id"], dtype=np.int64), "vector": vectors,
                "status": status.astype(str), "reason": reasons.astype(str)}

    def _encode_isolated(self, items: list[Item]) -> tuple[np.ndarray, list[str]]:
        """Encode a batch; if it raises, retry item by item so only the culprit fails.

        Broad ``except`` on purpose: a job over millions of items must not die on one odd input, and every
        failure is logged and recorded with its reason in the manifest.
        """
        try:
            return self._checked(self.encode(items), len(items)), [""] * len(items)
        except Exception as err:  # noqa: BLE001
            if len(items) == 1:
                log.warning("%s: item %d failed: %r", self.cfg.name, items[0].item_id, err)
                return np.zeros((1, self.dim), dtype=np.float32), [f"{type(err).__name__}: {err}"]
            log.warning("%s: batch of %d failed (%r); retrying item by item", self.cfg.name, len(items), err)
        results = [self._encode_isolated([item]) for item in items]
        return np.concatenate([vectors for vectors, _ in results]), [errors[0] for _, errors in results]

    def _checked(self, vectors: np.ndarray, count: int) -> np.ndarray:
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.shape != (count, self.dim):
            raise ValueError(f"encoder returned shape {vectors.shape}, expected {(count, self.dim)}")
        if not np.isfinite(vectors).all():
            raise ValueError("encoder returned non-finite values (try dtype float32)")
        return vectors


EXTRACTORS: dict[str, type[Extractor]] = {}


def register(kind: str) -> Callable[[type[Extractor]], type[Extractor]]:
    def add(cls: type[Extractor]) -> type[Extractor]:
        if kind in EXTRACTORS:
            raise KeyError(f"extractor kind {kind!r} is registered twice")
        cls.kind = kind
        EXTRACTORS[kind] = cls
        return cls

    return add


def get_extractor(kind: str) -> type[Extractor]:
    """The extractor class of ``kind``; ``KeyError`` listing the valid kinds otherwise."""
    if kind not in EXTRACTORS:
        raise KeyError(f"Unknown extractor kind {kind!r}. Available: {sorted(EXTRACTORS)}")
    return EXTRACTORS[kind]


@register("lvlm_embed")
class LVLMEmbedExtractor(Extractor):
    """Hidden-state embedding of image + title + text from an LVLM (fields: model, pooling, layer, dtype, prompt,
    max_image_size, trust_remote_code)."""

    needs_image = True

    def __init__(self, cfg: ExtractorConfig, cache_dir: str | None = None) -> None:
        from rmm.features.lvlm import LVLMEmbedder

        super().__init__(cfg, cache_dir)
        self.embedder = LVLMEmbedder(resolve_model_id(_require_model(cfg), cache_dir), pooling=cfg.pooling,
                                     layer=cfg.layer, dtype=cfg.dtype, prompt=cfg.prompt,
                                     trust_remote_code=cfg.trust_remote_code, device=self.device())
        self.dim = self.embedder.dim

    @classmethod
    def describe(cls, cfg: ExtractorConfig, cache_dir: str | None = None) -> dict[str, Any]:
        from rmm.features.lvlm import check_pooling

        check_pooling(cfg.pooling)
        template = get_template(cfg.prompt)
        model = _require_model(cfg)
        return {"model": model, "model_path": resolve_model_id(model, cache_dir), "pooling": cfg.pooling,
                "layer": cfg.layer, "model_dtype": cfg.dtype, "max_image_size": cfg.max_image_size,
                "prompt": template.name, "prompt_template": template_text(template),
                "prompt_sha256": template_sha256(template)}

    def missing_reason(self, item: Item) -> str:
        return "" if item.has_text or item.image is not None else f"empty title and text, {item.image_reason}"

    def note(self, item: Item) -> str:
        if item.image is None:
            fallback = "; image_mean pooled all tokens" if self.cfg.pooling == "image_mean" else ""
            return f"text only ({item.image_reason}){fallback}"
        return "" if item.has_text else "image only (empty title and text)"

    def encode(self, items: list[Item]) -> np.ndarray:
        return self.embedder.embed([i.title for i in items], [i.text for i in items], [i.image for i in items])


@register("sentence")
class SentenceExtractor(Extractor):
    """Sentence-transformers embedding of ``title. text`` (fields: model; None or "minilm" = all-MiniLM-L6-v2)."""

    def __init__(self, cfg: ExtractorConfig, cache_dir: str | None = None) -> None:
        super().__init__(cfg, cache_dir)
        self.encoder = SentenceEncoder(cfg.model, device=self.device(), batch_size=cfg.batch_size)
        self.dim = self.encoder.dim

    @classmethod
    def describe(cls, cfg: ExtractorConfig, cache_dir: str | None = None) -> dict[str, Any]:
        return {"model": cfg.model or "all-MiniLM-L6-v2", "model_path": resolve_sentence_model(cfg.model),
                "pooling": "model's own (sentence-transformers), L2-normalised", "input": "title. text"}

    def encode(self, items: list[Item]) -> np.ndarray:
        return self.encoder.encode([sentence_text(i.title, i.text) for i in items])


@register("image_stats")
class ImageStatsExtractor(Extractor):
    """HSV colour histogram + grey thumbnail of the image, no model (field: max_image_size)."""

    needs_image = True

    def __init__(self, cfg: ExtractorConfig, cache_dir: str | None = None) -> None:
        super().__init__(cfg, cache_dir)
        self.dim = IMAGE_STATS_DIM

    @classmethod
    def describe(cls, cfg: ExtractorConfig, cache_dir: str | None = None) -> dict[str, Any]:
        return {"model": None, "hsv_bins": list(HSV_BINS), "thumbnail_size": THUMBNAIL_SIZE,
                "max_image_size": cfg.max_image_size}

    def missing_reason(self, item: Item) -> str:
        return "" if item.image is not None else item.image_reason

    def encode(self, items: list[Item]) -> np.ndarray:
        return np.stack([image_stats(item.image) for item in items])


def _require_model(cfg: ExtractorConfig) -> str:
    if not cfg.model:
        raise ValueError(f"extractor {cfg.name!r} (lvlm_embed) needs a model: a hub id, a local path or "
                         "tiny:qwen2-vl")
    return cfg.model
