"""Extractor registry and the batch contract between Ray Data and the encoders.

An extractor loads its model once in ``__init__`` and maps a numpy batch dict to one table per output feature,
``{item_id, vector, status, reason}`` (+ extra text columns such as a description's ``text`` and ``fields``).
Most extractors have one output; ``lvlm_embed`` with several ``poolings`` has one per pooling (one forward
pass), ``lvlm_describe`` has the description embedding (and a keyword feature derived after extraction).
Ray Data runs an :class:`ExtractorGroup` (one or several extractors sharing an actor and its model loads) in an
actor pool (``map_batches(ExtractorGroup, ...)``).

The batch carries ``item_id``, ``title``, ``text``, optionally ``todo/<kind>:<name>`` (False: already written by
an earlier run, skip) and, for image extractors, the columns :func:`decode_images` adds (raw RGB bytes + shape,
so Arrow stores them natively). ``status`` is ``done``, ``missing`` (the item lacks the input this extractor
needs; zero row), ``failed`` (encoding raised; zero row) or ``skipped`` (not written); ``reason`` says why, and on
a ``done`` row notes a partial input ("text only: no image").

Within a batch an extractor sorts items by input length (:meth:`Extractor.sort_keys`) and encodes them in model
batches of ``batch_size``: length bucketing, so a batch pads to similar lengths. A second model over the first's
outputs (``lvlm_describe``'s sentence encoder over the answers) runs once over the whole batch
(:meth:`Extractor.second_pass`), sorting a few hundred answers by length. Everything here runs without
Ray; torch and transformers are imported on first use (they cost seconds per Ray worker, and image-decoding
tasks never need them).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

import numpy as np
import pyarrow as pa
from PIL import Image

from rmm.config import (
    CLIPImageConfig,
    CLIPTextConfig,
    EncoderConfig,
    ExtractorConfig,
    ImageExtractorConfig,
    ImageStatsConfig,
    LVLMDescribeConfig,
    LVLMEmbedConfig,
    SentenceConfig,
    TorchvisionConfig,
    ViTConfig,
)
from rmm.data.schema import nonfinite_rows
from rmm.errors import ConfigError, UnknownNameError
from rmm.features import describe as structured
from rmm.features.encoders import (
    HSV_BINS,
    IMAGE_STATS_DIM,
    THUMBNAIL_SIZE,
    SentenceEncoder,
    image_stats,
    resolve_sentence_model,
    sentence_model_label,
    sentence_text,
)
from rmm.features.prompts import get_template, item_text, load_describe_template, template_sha256, template_text
from rmm.features.store import (
    DESCRIPTIONS_FILE,
    MANIFEST_FILE,
    consolidate_parts,
    feature_dir,
    read_parts,
    write_feature,
)
from rmm.features.tiny import resolve_model_id
from rmm.storage import join_location, open_input

log = logging.getLogger(__name__)

DONE, MISSING, FAILED, SKIPPED = "done", "missing", "failed", "skipped"
NO_IMAGE = "no image"
TODO_PREFIX = "todo/"

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
    ``dataset_dir`` may be a URI (:mod:`rmm.storage`): a task on any node reads the images where they live.

    Returns:
        ``(pixels, "")``, or ``(None, reason)`` when there is no path or the file is missing or unreadable: a
        bad image must cost the item its image, never the job.
    """
    if not isinstance(image_path, str) or not image_path:  # None, or NaN from a pandas object column
        return None, NO_IMAGE
    where = join_location(str(dataset_dir), image_path)
    try:
        with open_input(str(dataset_dir), image_path) as stream, Image.open(stream) as opened:
            picture = opened.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as err:
        log.warning("skipping image of %s: %s", where, err)
        # The reason goes to the manifest, which must not depend on where the data lives.
        message = re.sub(r"\S*" + re.escape(image_path), image_path, str(err))
        return None, f"unreadable image {image_path}: {type(err).__name__}: {message}"
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

#: The config class an extractor class takes (its kind's class in ``rmm.config.EXTRACTOR_CONFIGS``).
CfgT = TypeVar("CfgT", bound=ExtractorConfig)
#: The config class of an extractor reading images.
ImageCfgT = TypeVar("ImageCfgT", bound=ImageExtractorConfig)
#: The config class of an extractor with a neural model.
EncoderCfgT = TypeVar("EncoderCfgT", bound=EncoderConfig)


@dataclass
class _Rows:
    """What an extractor fills in for the rows of one Ray batch: output columns (vectors and extra strings), and
    each row's status and reason."""

    ids: np.ndarray
    columns: dict[str, np.ndarray]
    status: np.ndarray
    reasons: np.ndarray

    def fail(self, row: int, reason: str) -> None:
        """Mark ``row`` failed, dropping whatever an earlier step wrote for it."""
        self.status[row], self.reasons[row] = FAILED, reason
        for column in self.columns.values():
            column[row] = "" if column.dtype == object else 0


class Extractor(ABC, Generic[CfgT]):
    """Base of all extractors: per-item bookkeeping, length bucketing and failure isolation around
    :meth:`encode` (and :meth:`second_pass`).

    Args:
        cfg: this extractor's config, of its kind's config class.
        cache_dir: cache root of ``tiny:`` models for extractors that load one; part of every extractor's
            constructor so the pipeline can pass it uniformly (an actor's environment may lack ``RMM_CACHE``).
    """

    kind: ClassVar[str]
    needs_image: ClassVar[bool] = False
    #: Per-item string columns :meth:`encode` returns besides the vectors; stored with the first output.
    extra_columns: ClassVar[tuple[str, ...]] = ()
    #: Output feature name -> vector dimension, set by ``__init__``.
    dims: dict[str, int]

    def __init__(self, cfg: CfgT, cache_dir: str | None = None) -> None:
        self.cfg = cfg
        #: Outputs that :meth:`second_pass` computes once per Ray batch instead of :meth:`encode` per model batch.
        self.second_pass_outputs: tuple[str, ...] = ()

    @classmethod
    def output_names(cls, cfg: CfgT) -> tuple[str, ...]:
        """The features written from this extractor's parts (default: one, named like the extractor)."""
        return (cfg.name,)

    @classmethod
    def derived_names(cls, cfg: CfgT) -> tuple[str, ...]:
        """Features computed from the outputs once every item is written (``lvlm_describe``'s keywords)."""
        return ()

    @classmethod
    def feature_names(cls, cfg: CfgT) -> tuple[str, ...]:
        return cls.output_names(cfg) + cls.derived_names(cfg)

    @classmethod
    @abstractmethod
    def describe(cls, cfg: CfgT, cache_dir: str | None = None) -> dict[str, Any]:
        """Manifest fields (model, prompt, pooling, ...), computed on the driver without loading the model;
        raises ``ValueError``/``KeyError`` on an invalid config so a bad extractor fails before any work."""

    @classmethod
    def output_manifest(cls, cfg: CfgT, output: str) -> dict[str, Any]:
        """Manifest fields specific to one output (``lvlm_embed``: its pooling)."""
        return {}

    @abstractmethod
    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        """Encode one model batch.

        Returns:
            output name -> (len(items), dim) vectors for every output not in :attr:`second_pass_outputs`, plus each of
            :attr:`extra_columns` -> (len(items),) str.
        """

    def second_pass(self, items: list[Item], encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The :attr:`second_pass_outputs` of every item of a Ray batch that :meth:`encode` handled, given what it
        returned for them (same order): for a second model over the first's outputs, which pads less when it
        sorts a few hundred inputs by length than a model batch of them. Called only when
        :attr:`second_pass_outputs` is set; an item it fails on fails alone, as in :meth:`encode`.

        Returns:
            each name of :attr:`second_pass_outputs` -> (len(items), dim) vectors.
        """
        raise NotImplementedError(f"{type(self).__name__} sets `second_pass_outputs` but has no second_pass()")

    def sort_keys(self, items: list[Item]) -> list[int]:
        """Length-bucketing keys (input tokens), one per item; items are encoded in key order, so model batches
        hold items of similar length. All equal (the default): input order."""
        return [0] * len(items)

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

    def __call__(self, batch: Mapping[str, np.ndarray]) -> dict[str, Batch]:
        """Encode a batch (skipping rows whose ``todo/<kind>:<name>`` is False) into one table per output."""
        items = [self._fit(item) for item in items_from_batch(batch)]
        size = len(items)
        todo_flags = batch.get(TODO_PREFIX + self.cfg.key)
        rows = _Rows(ids=np.asarray(batch["item_id"], dtype=np.int64),
                     columns={name: np.zeros((size, dim), dtype=np.float32) for name, dim in self.dims.items()}
                     | {name: np.full(size, "", dtype=object) for name in self.extra_columns},
                     status=np.full(size, DONE, dtype=object),
                     reasons=np.array([self.note(item) for item in items], dtype=object))
        todo = []
        for i, item in enumerate(items):
            if todo_flags is not None and not todo_flags[i]:
                rows.status[i], rows.reasons[i] = SKIPPED, ""
            elif why := self.missing_reason(item):
                rows.status[i], rows.reasons[i] = MISSING, why
            else:
                todo.append(i)
        keys = self._keys([items[i] for i in todo])
        todo = [i for _, i in sorted(zip(keys, todo, strict=True), key=lambda pair: pair[0])]
        encoded = [name for name in rows.columns if name not in self.second_pass_outputs]
        for start in range(0, len(todo), self.cfg.batch_size):
            self._isolated(todo[start:start + self.cfg.batch_size],
                           lambda chunk: self.encode([items[i] for i in chunk]), encoded, rows)
        if self.second_pass_outputs:
            self._isolated([i for i in todo if rows.status[i] == DONE],
                           lambda done: self.second_pass([items[i] for i in done],
                                                         {name: rows.columns[name][done] for name in encoded}),
                           self.second_pass_outputs, rows)
        tables = {}
        for index, name in enumerate(self.dims):
            table = {"item_id": rows.ids, "vector": rows.columns[name], "status": rows.status.astype(str),
                     "reason": rows.reasons.astype(str)}
            if index == 0:
                table.update({extra: rows.columns[extra].astype(str) for extra in self.extra_columns})
            tables[name] = table
        return tables

    def _keys(self, items: list[Item]) -> list[int]:
        """:meth:`sort_keys`, or input order if it raises: bucketing is an optimisation, never a reason to fail."""
        if not items:
            return []
        try:
            return list(self.sort_keys(items))
        except Exception as err:  # noqa: BLE001 (logged; the batch is encoded unsorted)
            log.warning("%s: sort keys failed (%r); encoding in input order", self.cfg.name, err)
            return [0] * len(items)

    def _fit(self, item: Item) -> Item:
        """Shrink an image larger than this extractor's ``max_image_size`` (a group decodes at its largest)."""
        if not isinstance(self.cfg, ImageExtractorConfig):  # an extractor that never reads the image
            return item
        limit = self.cfg.max_image_size
        if item.image is None or max(item.image.shape[:2]) <= limit:
            return item
        picture = Image.fromarray(item.image)
        picture.thumbnail((limit, limit))
        return Item(item.item_id, item.title, item.text, np.asarray(picture), item.image_reason)

    def _isolated(self, todo: list[int], compute: Callable[[list[int]], Mapping[str, np.ndarray]],
                  names: Sequence[str], rows: _Rows) -> None:
        """Store the columns ``names`` of ``compute(todo)`` (row positions in, one value per row out) into
        ``rows``; if it raises, retry row by row so only the culprit fails.

        Broad ``except`` on purpose: a job over millions of items must not die on one odd input, and every
        failure is logged and recorded with its reason in the manifest.
        """
        if not todo:
            return
        try:
            values = self._checked(compute(todo), len(todo), names)
        except Exception as err:  # noqa: BLE001
            if len(todo) == 1:
                log.warning("%s: item %d failed: %r", self.cfg.name, rows.ids[todo[0]], err)
                rows.fail(todo[0], f"{type(err).__name__}: {err}")
                return
            log.warning("%s: batch of %d failed (%r); retrying item by item", self.cfg.name, len(todo), err)
            for row in todo:
                self._isolated([row], compute, names, rows)
            return
        for name, column in values.items():
            rows.columns[name][todo] = column

    def _checked(self, encoded: Mapping[str, np.ndarray], count: int, names: Sequence[str]) -> dict[str, np.ndarray]:
        out = {}
        for name in names:
            if name in self.extra_columns:
                out[name] = np.asarray(encoded[name], dtype=object)
                if out[name].shape != (count,):
                    raise ValueError(f"encoder returned shape {out[name].shape} for {name}, expected {(count,)}")
                continue
            vectors = np.asarray(encoded[name], dtype=np.float32)
            if vectors.shape != (count, self.dims[name]):
                raise ValueError(f"encoder returned shape {vectors.shape} for {name}, expected "
                                 f"{(count, self.dims[name])}")
            if len(nonfinite_rows(vectors)):
                raise ValueError(f"encoder returned non-finite values for {name} (try dtype float32)")
            out[name] = vectors
        return out

    # -------------------------------------------------------------------------------- driver side

    @classmethod
    def finalize(cls, feature_root: str | Path, cfg: CfgT, num_items: int,
                 manifest: Mapping[str, Any]) -> list[Path]:
        """Consolidate every output's parts into ``matrix.npy`` + ``manifest.json`` (on the driver, once all
        items are written); extractors with derived features extend this."""
        return [consolidate_parts(feature_root, name, num_items, {**manifest, **cls.output_manifest(cfg, name)})
                for name in cls.output_names(cfg)]


EXTRACTORS: dict[str, type[Extractor[Any]]] = {}


def register(kind: str) -> Callable[[type[Extractor[Any]]], type[Extractor[Any]]]:
    def add(cls: type[Extractor[Any]]) -> type[Extractor[Any]]:
        if kind in EXTRACTORS:
            raise KeyError(f"extractor kind {kind!r} is registered twice")
        cls.kind = kind
        EXTRACTORS[kind] = cls
        return cls

    return add


def get_extractor(kind: str) -> type[Extractor[Any]]:
    """The extractor class of ``kind``; ``KeyError`` listing the valid kinds otherwise."""
    if kind not in EXTRACTORS:
        raise UnknownNameError(f"Unknown extractor kind {kind!r}. Available: {sorted(EXTRACTORS)}")
    return EXTRACTORS[kind]


class ExtractorGroup:
    """The actor class Ray Data runs: one or several extractors sharing a process (and, through the
    per-process model caches, any model they have in common: an embed and a describe extractor of one LVLM, CLIP's
    image and text towers, MiniLM for text and for descriptions).

    ``__call__`` returns an Arrow table with ``item_id`` and, per output feature, ``<feature>/vector``
    (list<float32>), ``<feature>/status``, ``<feature>/reason`` and its extra columns; the feature sink splits it.

    Args:
        num_threads: torch intra-op threads of this process, the CPUs Ray reserved for the actor
            (:func:`actor_threads`), set once the extractors are built if one of them loaded torch (a group
            without a model never pays its import); None leaves torch's own choice (every core of the machine,
            whatever the actor reserved, so actors sharing a node would oversubscribe it).
    """

    def __init__(self, cfgs: Sequence[ExtractorConfig], cache_dir: str | None = None,
                 num_threads: int | None = None) -> None:
        self.extractors = [get_extractor(cfg.kind)(cfg, cache_dir) for cfg in cfgs]
        if num_threads is not None and "torch" in sys.modules:
            sys.modules["torch"].set_num_threads(num_threads)

    def __call__(self, batch: Mapping[str, np.ndarray]) -> pa.Table:
        columns: dict[str, pa.Array] = {"item_id": pa.array(np.asarray(batch["item_id"], dtype=np.int64))}
        for extractor in self.extractors:
            for feature, table in extractor(batch).items():
                for column, values in table.items():
                    if column == "item_id":
                        continue
                    columns[f"{feature}/{column}"] = (vector_list(values) if column == "vector"
                                                      else pa.array(values, pa.string()))
        return pa.table(columns)


def actor_threads(num_cpus: float) -> int:
    """torch threads of an actor that reserved ``num_cpus`` CPUs: as many as it reserved (at least one), so an
    actor given the whole node uses every core and actors sharing a node do not compete for them."""
    return max(1, int(num_cpus))


def vector_list(vectors: np.ndarray) -> pa.Array:
    """(N, D) float32 -> Arrow ``list<float32>`` (the store contract), not Ray's tensor extension type."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    flat = pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), vectors.shape[1])
    return flat.cast(pa.list_(pa.float32()))


# ------------------------------------------------------------------------------------------------- LVLM

@register("lvlm_embed")
class LVLMEmbedExtractor(Extractor[LVLMEmbedConfig]):
    """Hidden-state embedding of image + title + text from an LVLM (fields: model, pooling or poolings, layer,
    dtype, prompt, max_image_size, attn_implementation, trust_remote_code).

    With ``poolings`` set, one forward pass feeds one feature per pooling, ``<name>_<pooling>``; otherwise the
    single feature ``<name>`` uses ``pooling``.
    """

    needs_image = True

    def __init__(self, cfg: LVLMEmbedConfig, cache_dir: str | None = None) -> None:
        from rmm.features.lvlm import LVLMEmbedder

        super().__init__(cfg, cache_dir)
        self.embedder = LVLMEmbedder(resolve_model_id(_require_model(cfg), cache_dir), poolings=_poolings(cfg),
                                     layer=cfg.layer, dtype=cfg.dtype, prompt=cfg.prompt,
                                     trust_remote_code=cfg.trust_remote_code, device=self.device(),
                                     attn_implementation=cfg.attn_implementation)
        self.outputs = dict(zip(_poolings(cfg), self.output_names(cfg), strict=True))  # pooling -> feature
        self.dims = {name: self.embedder.dim for name in self.outputs.values()}

    @classmethod
    def output_names(cls, cfg: LVLMEmbedConfig) -> tuple[str, ...]:
        return tuple(f"{cfg.name}_{p}" for p in cfg.poolings) if cfg.poolings else (cfg.name,)

    @classmethod
    def describe(cls, cfg: LVLMEmbedConfig, cache_dir: str | None = None) -> dict[str, Any]:
        from rmm.features.lvlm import check_pooling

        for pooling in _poolings(cfg):
            check_pooling(pooling)
        template = get_template(cfg.prompt)
        model = _require_model(cfg)
        return {"model": model, "model_path": resolve_model_id(model, cache_dir), "pooling": cfg.pooling,
                "layer": cfg.layer, "model_dtype": cfg.dtype, "max_image_size": cfg.max_image_size,
                "attn_implementation": cfg.attn_implementation, "prompt": template.name,
                "prompt_template": template_text(template), "prompt_sha256": template_sha256(template)}

    @classmethod
    def output_manifest(cls, cfg: LVLMEmbedConfig, output: str) -> dict[str, Any]:
        return {"pooling": dict(zip(cls.output_names(cfg), _poolings(cfg), strict=True))[output]}

    def missing_reason(self, item: Item) -> str:
        return "" if item.has_text or item.image is not None else f"empty title and text, {item.image_reason}"

    def note(self, item: Item) -> str:
        if item.image is None:
            fallback = "; image_mean pooled all tokens" if "image_mean" in _poolings(self.cfg) else ""
            return f"text only ({item.image_reason}){fallback}"
        return "" if item.has_text else "image only (empty title and text)"

    def sort_keys(self, items: list[Item]) -> list[int]:
        return self.embedder.input_lengths([item_text(self.embedder.template, i.title, i.text) for i in items],
                                           [i.image for i in items])

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        pooled = self.embedder.embed([i.title for i in items], [i.text for i in items], [i.image for i in items])
        return {feature: pooled[pooling] for pooling, feature in self.outputs.items()}


@register("lvlm_describe")
class LVLMDescribeExtractor(Extractor[LVLMDescribeConfig]):
    """A structured description generated by an LVLM, embedded with a sentence encoder.

    Fields: model, prompt (describe template name or YAML path), max_new_tokens, do_sample, temperature, top_p,
    seed, dtype, max_image_size, attn_implementation, text_encoder, keywords_top_n.

    Writes ``<name>_desc_<encoder>`` (the description's sentence embedding; its directory also holds
    ``descriptions.parquet``: item_id, text, fields as JSON, parse status) and, once every item is described,
    ``<name>_keywords`` (per slot, the top-N normalised values plus Other, one-hot). An empty answer is embedded
    from the item's title and text instead.
    """

    needs_image = True
    extra_columns = ("text", "fields", "parse")

    def __init__(self, cfg: LVLMDescribeConfig, cache_dir: str | None = None) -> None:
        from rmm.features.lvlm import LVLMDescriber

        super().__init__(cfg, cache_dir)
        self.template = load_describe_template(cfg.prompt)
        self.describer = LVLMDescriber(resolve_model_id(_require_model(cfg), cache_dir), template=self.template,
                                       max_new_tokens=cfg.max_new_tokens, do_sample=cfg.do_sample,
                                       temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed,
                                       dtype=cfg.dtype, trust_remote_code=cfg.trust_remote_code,
                                       device=self.device(), attn_implementation=cfg.attn_implementation)
        self.encoder = SentenceEncoder(cfg.text_encoder, device=self.device(), batch_size=cfg.batch_size)
        self.dims = {self.output_names(cfg)[0]: self.encoder.dim}
        self.second_pass_outputs = tuple(self.dims)

    @classmethod
    def output_names(cls, cfg: LVLMDescribeConfig) -> tuple[str, ...]:
        return (f"{cfg.name}_desc_{sentence_model_label(cfg.text_encoder)}",)

    @classmethod
    def derived_names(cls, cfg: LVLMDescribeConfig) -> tuple[str, ...]:
        return (f"{cfg.name}_keywords",)

    @classmethod
    def describe(cls, cfg: LVLMDescribeConfig, cache_dir: str | None = None) -> dict[str, Any]:
        template = load_describe_template(cfg.prompt)
        model = _require_model(cfg)
        decoding: dict[str, Any] = {"max_new_tokens": cfg.max_new_tokens, "do_sample": cfg.do_sample}
        if cfg.do_sample:
            decoding.update(temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed)
        return {"model": model, "model_path": resolve_model_id(model, cache_dir), "model_dtype": cfg.dtype,
                "max_image_size": cfg.max_image_size, "attn_implementation": cfg.attn_implementation,
                "prompt": template.name, "prompt_template": template_text(template),
                "prompt_sha256": template_sha256(template), "slots": list(template.slot_names),
                "decoding": decoding, "text_encoder": cfg.text_encoder,
                "text_encoder_path": resolve_sentence_model(cfg.text_encoder)}

    def missing_reason(self, item: Item) -> str:
        return "" if item.has_text or item.image is not None else f"empty title and text, {item.image_reason}"

    def note(self, item: Item) -> str:
        if item.image is None:
            return f"text only ({item.image_reason})"
        return "" if item.has_text else "image only (empty title and text)"

    def sort_keys(self, items: list[Item]) -> list[int]:
        return self.describer.input_lengths([item_text(self.template, i.title, i.text) for i in items],
                                            [i.image for i in items])

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        texts = self.describer.describe([i.title for i in items], [i.text for i in items], [i.image for i in items])
        parsed = [structured.parse_description(text, self.template.slot_names) for text in texts]
        return {"text": np.array(texts, dtype=object),
                "fields": np.array([p.fields_json for p in parsed], dtype=object),
                "parse": np.array([p.status for p in parsed], dtype=object)}

    def second_pass(self, items: list[Item], encoded: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The answers' sentence embeddings, in one call per Ray batch (the encoder sorts them by tokens)."""
        inputs = [text or sentence_text(item.title, item.text) for text, item in zip(encoded["text"], items,
                                                                                        strict=True)]
        return {self.second_pass_outputs[0]: self.encoder.encode(inputs)}

    @classmethod
    def finalize(cls, feature_root: str | Path, cfg: LVLMDescribeConfig, num_items: int,
                 manifest: Mapping[str, Any]) -> list[Path]:
        """Write ``descriptions.parquet``, the description feature (with parse counts) and the keyword feature."""
        (desc_name,), (keywords_name,) = cls.output_names(cfg), cls.derived_names(cfg)
        parts = read_parts(feature_root, desc_name, columns=["item_id", "status", "text", "fields", "parse"])
        done = parts[parts["status"] == DONE].sort_values("item_id", ignore_index=True)
        done[["item_id", "text", "fields", "parse"]].to_parquet(feature_dir(feature_root, desc_name)
                                                                / DESCRIPTIONS_FILE, index=False)
        counts = done["parse"].value_counts()
        parse = {status: int(counts.get(status, 0))
                 for status in (structured.PARSED, structured.PARTIAL, structured.UNPARSED)}
        parse["failures"] = parse[structured.PARTIAL] + parse[structured.UNPARSED]
        described = {**manifest, "parse": parse, "descriptions": DESCRIPTIONS_FILE}
        paths = [consolidate_parts(feature_root, desc_name, num_items, described)]

        slots = manifest["slots"]
        fields: list[dict[str, str] | None] = [None] * num_items
        for item_id, text in zip(done["item_id"], done["fields"], strict=True):
            fields[int(item_id)] = json.loads(text)
        vocabulary = structured.keyword_vocabulary(fields, slots, cfg.keywords_top_n)
        desc_manifest = json.loads((feature_dir(feature_root, desc_name) / MANIFEST_FILE).read_text())
        not_described = {int(k): f"no description: {v}" for k, v in desc_manifest["missing"].items()}
        failed = {int(k): f"no description: {v}" for k, v in desc_manifest["failed"].items()}
        paths.append(write_feature(
            feature_root, keywords_name, structured.keyword_matrix(fields, vocabulary),
            {**manifest, "kind": "lvlm_keywords", "derived_from": desc_name, "parse": parse,
             "keywords_top_n": cfg.keywords_top_n, "min_keyword_count": structured.MIN_KEYWORD_COUNT,
             "vocabulary": vocabulary, "columns": structured.keyword_columns(vocabulary)},
            missing=not_described, failed=failed))
        return paths


def _poolings(cfg: LVLMEmbedConfig) -> tuple[str, ...]:
    return cfg.poolings or (cfg.pooling,)


def _require_model(cfg: EncoderConfig, example: str = "tiny:qwen2-vl") -> str:
    if not cfg.model:
        raise ConfigError(f"extractor {cfg.name!r} ({cfg.kind}) needs a model: a hub id, a local path or {example}")
    return cfg.model


# ---------------------------------------------------------------------------------------------- classic

@register("sentence")
class SentenceExtractor(Extractor[SentenceConfig]):
    """Sentence-transformers embedding of ``title. text`` (fields: model; None or "minilm" = all-MiniLM-L6-v2)."""

    def __init__(self, cfg: SentenceConfig, cache_dir: str | None = None) -> None:
        super().__init__(cfg, cache_dir)
        self.encoder = SentenceEncoder(cfg.model, device=self.device(), batch_size=cfg.batch_size)
        self.dims = {cfg.name: self.encoder.dim}

    @classmethod
    def describe(cls, cfg: SentenceConfig, cache_dir: str | None = None) -> dict[str, Any]:
        return {"model": cfg.model or "all-MiniLM-L6-v2", "model_path": resolve_sentence_model(cfg.model),
                "pooling": "model's own (sentence-transformers), L2-normalised", "input": "title. text"}

    def sort_keys(self, items: list[Item]) -> list[int]:
        return self.encoder.token_counts([sentence_text(i.title, i.text) for i in items])

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        return {self.cfg.name: self.encoder.encode([sentence_text(i.title, i.text) for i in items])}


class _ImageExtractor(Extractor[ImageCfgT]):
    """An extractor reading only the image: an item without one is missing."""

    needs_image = True

    def missing_reason(self, item: Item) -> str:
        return "" if item.image is not None else item.image_reason

    @staticmethod
    def images(items: list[Item]) -> list[np.ndarray]:
        """The pixels of ``items``, which the pipeline gives an image extractor only when ``missing_reason`` is
        empty for each."""
        pixels = [item.image for item in items]
        missing = [item.item_id for item, image in zip(items, pixels, strict=True) if image is None]
        if missing:
            raise ValueError(f"image extractor given items without an image: {missing[:5]}")
        return [image for image in pixels if image is not None]


@register("image_stats")
class ImageStatsExtractor(_ImageExtractor[ImageStatsConfig]):
    """HSV colour histogram + grey thumbnail of the image, no model (field: max_image_size)."""

    def __init__(self, cfg: ImageStatsConfig, cache_dir: str | None = None) -> None:
        super().__init__(cfg, cache_dir)
        self.dims = {cfg.name: IMAGE_STATS_DIM}

    @classmethod
    def describe(cls, cfg: ImageStatsConfig, cache_dir: str | None = None) -> dict[str, Any]:
        return {"model": None, "hsv_bins": list(HSV_BINS), "thumbnail_size": THUMBNAIL_SIZE,
                "max_image_size": cfg.max_image_size}

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        return {self.cfg.name: np.stack([image_stats(image) for image in self.images(items)])}


@register("torchvision")
class TorchvisionExtractor(_ImageExtractor[TorchvisionConfig]):
    """Pooled features of a torchvision CNN, default ResNet50 (2048-d). Fields: model (builder name, default
    resnet50), weights (None = random init, an enum name such as IMAGENET1K_V2, or a local .pth), max_image_size
    (input resolution), dtype."""

    def __init__(self, cfg: TorchvisionConfig, cache_dir: str | None = None) -> None:
        from rmm.features.encoders import TorchvisionImageEncoder

        super().__init__(cfg, cache_dir)
        self.encoder = TorchvisionImageEncoder(cfg.model or "resnet50", cfg.weights, image_size=cfg.max_image_size,
                                               device=self.device(), dtype=cfg.dtype)
        self.dims = {cfg.name: self.encoder.dim}

    @classmethod
    def describe(cls, cfg: TorchvisionConfig, cache_dir: str | None = None) -> dict[str, Any]:
        from rmm.features.encoders import check_torchvision

        check_torchvision(cfg.model or "resnet50", cfg.weights)
        if cfg.weights is None:
            log.warning("%s: torchvision %s with random weights (architecture only); set weights: IMAGENET1K_V2 "
                        "or a local .pth for real features", cfg.name, cfg.model or "resnet50")
        return {"model": cfg.model or "resnet50", "weights": cfg.weights or "random", "model_dtype": cfg.dtype,
                "input_size": cfg.max_image_size, "pooling": "global average (classifier removed)",
                "preprocess": "shorter side resized to input_size, centre crop, ImageNet mean/std"}

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        return {self.cfg.name: self.encoder.encode(self.images(items))}


@register("vit")
class ViTExtractor(_ImageExtractor[ViTConfig]):
    """A transformers ViT-style image model (``AutoModel``). Fields: model (hub id, local dir, ``tiny:vit``),
    pooling (``cls`` or ``mean``), max_image_size, dtype. L2-normalised."""

    def __init__(self, cfg: ViTConfig, cache_dir: str | None = None) -> None:
        from rmm.features.encoders import ViTImageEncoder

        super().__init__(cfg, cache_dir)
        self.encoder = ViTImageEncoder(resolve_model_id(_require_model(cfg, "tiny:vit"), cache_dir),
                                       pooling=cfg.pooling, device=self.device(), dtype=cfg.dtype)
        self.dims = {cfg.name: self.encoder.dim}

    @classmethod
    def describe(cls, cfg: ViTConfig, cache_dir: str | None = None) -> dict[str, Any]:
        model = _require_model(cfg, "tiny:vit")
        return {"model": model, "model_path": resolve_model_id(model, cache_dir), "pooling": cfg.pooling,
                "model_dtype": cfg.dtype, "max_image_size": cfg.max_image_size}

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        return {self.cfg.name: self.encoder.encode(self.images(items))}


class _CLIPExtractor(Extractor[EncoderCfgT]):
    def __init__(self, cfg: EncoderCfgT, cache_dir: str | None = None) -> None:
        from rmm.features.encoders import CLIPEncoder

        super().__init__(cfg, cache_dir)
        self.encoder = CLIPEncoder(resolve_model_id(_require_model(cfg, "tiny:clip"), cache_dir),
                                   device=self.device(), dtype=cfg.dtype)
        self.dims = {cfg.name: self.encoder.dim}

    @classmethod
    def describe(cls, cfg: EncoderCfgT, cache_dir: str | None = None) -> dict[str, Any]:
        model = _require_model(cfg, "tiny:clip")
        return {"model": model, "model_path": resolve_model_id(model, cache_dir), "model_dtype": cfg.dtype,
                "tower": "image" if cls.needs_image else "text", "pooling": "CLIP projection, L2-normalised"}


@register("clip_image")
class CLIPImageExtractor(_CLIPExtractor[CLIPImageConfig], _ImageExtractor[CLIPImageConfig]):
    """CLIP image tower (fields: model, dtype, max_image_size); in one group with ``clip_text`` of the same model
    the model is loaded once."""

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        return {self.cfg.name: self.encoder.encode_images(self.images(items))}


@register("clip_text")
class CLIPTextExtractor(_CLIPExtractor[CLIPTextConfig]):
    """CLIP text tower over ``title. text`` (truncated to the tower's context)."""

    def sort_keys(self, items: list[Item]) -> list[int]:
        return self.encoder.token_counts([sentence_text(i.title, i.text) for i in items])

    def encode(self, items: list[Item]) -> dict[str, np.ndarray]:
        return {self.cfg.name: self.encoder.encode_texts([sentence_text(i.title, i.text) for i in items])}
