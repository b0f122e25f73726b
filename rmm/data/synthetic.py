"""The built-in synthetic dataset: items with latent attributes, users with attribute tastes.

It exists so that the whole pipeline (LVLM extraction included) runs offline in seconds *and* so that
multimodality provably matters: colour and pattern are only drawn (never written), material and style are
only written (never drawn), the category is both. Users like a few values per attribute, and they pick items
by a low-temperature softmax over that affinity plus a popularity prior, so a model that reads both
modalities can beat one reading either alone, which in turn can beat an ID-only model.

Everything is a function of ``(config, seed)``: same inputs, byte-identical parquet files and PNGs.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFilter

from rmm.config import DatasetConfig, SyntheticConfig
from rmm.data.preprocess import RawData

IMAGES_DIR = "images"

#: Attribute -> its values. Shown in: category both, colour/pattern image only, material/style text only.
ATTRIBUTES: Mapping[str, tuple[str, ...]] = {
    "category": ("shirt", "shoe", "bag", "hat", "mug", "lamp"),
    "colour": ("red", "orange", "yellow", "green", "blue", "purple", "black", "white"),
    "pattern": ("solid", "stripes", "dots", "checks"),
    "material": ("cotton", "leather", "wool", "ceramic", "metal"),
    "style": ("classic", "sporty", "vintage", "minimalist"),
}
IMAGE_ATTRIBUTES = ("category", "colour", "pattern")
TEXT_ATTRIBUTES = ("category", "material", "style")

RGB = {"red": (200, 40, 40), "orange": (240, 140, 30), "yellow": (235, 210, 40), "green": (50, 160, 70),
       "blue": (40, 90, 200), "purple": (130, 60, 170), "black": (30, 30, 30), "white": (245, 245, 245)}

#: Weight of affinity (number of liked attribute values of an item) in the choice logit; popularity adds
#: ``-popularity_skew * log(rank)``. High enough that taste, not popularity, decides most picks.
AFFINITY_WEIGHT = 3.0
#: Seconds between a user's consecutive interactions are drawn from [MIN_GAP, MAX_GAP).
MIN_GAP, MAX_GAP = 60, 3 * 86400
START_TIME = 1_700_000_000
_USER_BLOCK = 1024

_TEMPLATES = (
    "A {style} {category} made of {material}. {filler}",
    "This {material} {category} has a {style} look. {filler}",
    "{Style} design in {material}: a {category} for every day. {filler}",
)
_FILLERS = ("Easy to care for.", "Ships in recycled packaging.", "A customer favourite.",
            "Lightweight and durable.", "Comes with a one-year warranty.", "Made in small batches.")

# Shapes in unit coordinates (x, y in [0, 1]): ("polygon", points) or ("rectangle"|"ellipse", box).
_SHAPES: Mapping[str, tuple[tuple[str, tuple[float, ...]], ...]] = {
    "shirt": (("polygon", (0.2, 0.25, 0.4, 0.17, 0.6, 0.17, 0.8, 0.25, 0.92, 0.45, 0.75, 0.5, 0.73, 0.86,
                           0.27, 0.86, 0.25, 0.5, 0.08, 0.45)),),
    "shoe": (("polygon", (0.1, 0.52, 0.42, 0.52, 0.5, 0.36, 0.66, 0.36, 0.92, 0.62, 0.92, 0.78, 0.1, 0.78)),),
    "bag": (("ellipse", (0.3, 0.18, 0.7, 0.62)), ("rectangle", (0.18, 0.4, 0.82, 0.86))),
    "hat": (("ellipse", (0.06, 0.6, 0.94, 0.8)), ("rectangle", (0.28, 0.22, 0.72, 0.7))),
    "mug": (("ellipse", (0.52, 0.38, 0.84, 0.72)), ("rectangle", (0.2, 0.26, 0.66, 0.84))),
    "lamp": (("polygon", (0.36, 0.12, 0.64, 0.12, 0.82, 0.5, 0.18, 0.5)), ("rectangle", (0.46, 0.5, 0.54, 0.8)),
             ("ellipse", (0.28, 0.76, 0.72, 0.9))),
}


@dataclass(frozen=True)
class World:
    """The latent truth behind the synthetic dataset.

    Attributes:
        items: ``source_id`` plus one column per attribute (value names).
        codes: attribute -> (num_items,) value index per item.
        likes: attribute -> (num_users, num_values) bool, the values each user likes.
        log_popularity: (num_items,) popularity prior of each item.
    """

    items: pd.DataFrame
    codes: Mapping[str, np.ndarray]
    likes: Mapping[str, np.ndarray]
    log_popularity: np.ndarray

    def affinity(self, users: slice = slice(None)) -> np.ndarray:
        """(num_users, num_items) for ``users``: how many of an item's attribute values the user likes."""
        return sum((self.likes[a][users][:, self.codes[a]].astype(np.float64) for a in ATTRIBUTES), start=np.zeros(()))


def user_source_id(index: int, num_users: int) -> str:
    return f"u{index:0{len(str(num_users - 1))}d}"


def item_source_id(index: int, num_items: int) -> str:
    return f"i{index:0{len(str(num_items - 1))}d}"


def sample_world(cfg: SyntheticConfig, seed: int) -> World:
    """Draw item attributes, user tastes (1-2 liked values per attribute) and item popularity."""
    rng = np.random.default_rng([seed, 0])
    codes = {a: rng.integers(len(values), size=cfg.num_items) for a, values in ATTRIBUTES.items()}
    likes = {}
    for attribute, values in ATTRIBUTES.items():
        scores = rng.random((cfg.num_users, len(values)))
        liked_count = rng.integers(1, 3, size=cfg.num_users)
        ranks = np.argsort(np.argsort(-scores, axis=1), axis=1)  # (U, V) rank of each value per user
        likes[attribute] = ranks < liked_count[:, None]
    popularity_rank = rng.permutation(cfg.num_items) + 1
    items = pd.DataFrame({"source_id": [item_source_id(i, cfg.num_items) for i in range(cfg.num_items)],
                          **{a: np.asarray(ATTRIBUTES[a])[codes[a]] for a in ATTRIBUTES}})
    return World(items=items, codes=codes, likes=likes,
                 log_popularity=-cfg.popularity_skew * np.log(popularity_rank))


def generate(cfg: DatasetConfig) -> RawData:
    """The synthetic dataset as raw frames (images are drawn later, for the items that survive k-core).

    Each user picks about ``interactions_per_user`` distinct items (uniform in [0.5x, 1.5x]) by sampling
    without replacement from softmax(``AFFINITY_WEIGHT`` * affinity + log popularity), via Gumbel top-k;
    the picks get increasing timestamps in random order.
    """
    syn = cfg.synthetic
    world = sample_world(syn, cfg.seed)
    rng = np.random.default_rng([cfg.seed, 1])
    low, high = max(1, syn.interactions_per_user // 2), syn.interactions_per_user * 3 // 2
    counts = np.minimum(rng.integers(low, high + 1, size=syn.num_users), syn.num_items)
    users, items, times = [], [], []
    for start in range(0, syn.num_users, _USER_BLOCK):  # blocks keep the (users, items) matrices small
        block = slice(start, min(start + _USER_BLOCK, syn.num_users))
        logits = AFFINITY_WEIGHT * world.affinity(block) + world.log_popularity[None, :]
        keys = logits + rng.gumbel(size=logits.shape)  # (block, I); top-n keys = a weighted draw of n items
        for row, user in enumerate(range(block.start, block.stop)):
            picked = np.sort(np.argpartition(-keys[row], counts[user] - 1)[:counts[user]])
            picked = rng.permutation(picked)  # time order independent of taste: preferences are stationary
            users += [user_source_id(user, syn.num_users)] * len(picked)
            items += [item_source_id(i, syn.num_items) for i in picked]
            times.append(START_TIME + rng.integers(0, 30 * 86400)
                         + np.cumsum(rng.integers(MIN_GAP, MAX_GAP, size=len(picked))))
    interactions = pd.DataFrame({"user": users, "item": items, "timestamp": np.concatenate(times)})
    return RawData(items=_describe(world.items, rng), interactions=interactions)


def _describe(items: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """Add title and text: category, material and style in words; colour and pattern never."""
    titles, texts = [], []
    for row in items.itertuples():
        words = {"category": row.category, "material": row.material, "style": row.style,
                 "Style": row.style.capitalize(), "filler": _FILLERS[rng.integers(len(_FILLERS))]}
        titles.append(f"{row.style.capitalize()} {row.material} {row.category} {row.source_id[1:]}")
        texts.append(_TEMPLATES[rng.integers(len(_TEMPLATES))].format(**words))
    return items.assign(title=titles, text=texts, image_source=None)


def draw_images(items: pd.DataFrame, root: Path, size: int, seed: int) -> pd.DataFrame:
    """Draw every item's PNG into ``<root>/images/<source_id>.png``; returns ``items`` with ``image_path``
    (relative to ``root``) in place of ``image_source``."""
    target = root / IMAGES_DIR
    target.mkdir(parents=True, exist_ok=True)
    paths = []
    for row in items.itertuples():
        rng = np.random.default_rng([seed, 2, zlib.crc32(row.source_id.encode())])
        image = draw_item(row.category, row.colour, row.pattern, size, rng)
        path = target / f"{row.source_id}.png"
        image.save(path, format="PNG")
        paths.append(path.relative_to(root).as_posix())
    return items.drop(columns="image_source").assign(image_path=paths)


def draw_item(category: str, colour: str, pattern: str, size: int, rng: np.random.Generator) -> Image.Image:
    """One ``size`` x ``size`` RGB picture: the category's silhouette filled with the colour and pattern,
    slightly jittered in position, scale and shade so no two items are pixel-identical."""
    scale = rng.uniform(0.85, 1.0)
    shift = rng.uniform(-0.05, 0.05, size=2)

    def to_pixels(coords: tuple[float, ...]) -> list[float]:
        return [((c - 0.5) * scale + 0.5 + shift[i % 2]) * (size - 1) for i, c in enumerate(coords)]

    mask = Image.new("L", (size, size), 0)
    pen = ImageDraw.Draw(mask)
    for kind, coords in _SHAPES[category]:
        points = to_pixels(coords)
        if kind == "polygon":
            pen.polygon(points, fill=255)
        else:
            getattr(pen, kind)(points, fill=255)
    base = np.clip(np.array(RGB[colour]) + rng.integers(-12, 13, size=3), 0, 255)
    fill = Image.new("RGB", (size, size), tuple(int(c) for c in base))
    _draw_pattern(ImageDraw.Draw(fill), pattern, size, _contrast(base))
    shade = int(rng.integers(165, 186))
    image = Image.new("RGB", (size, size), (shade, shade, shade + 8))
    image.paste(fill, (0, 0), mask)
    image.paste((20, 20, 20), (0, 0), mask.filter(ImageFilter.FIND_EDGES))
    return image


def _contrast(rgb: np.ndarray) -> tuple[int, int, int]:
    """A pattern colour visible on ``rgb``: darker on light colours, lighter on dark ones."""
    light = float(rgb @ np.array([0.299, 0.587, 0.114])) > 140
    out = rgb * 0.45 if light else rgb + (255 - rgb) * 0.6
    red, green, blue = (int(c) for c in out)
    return red, green, blue


def _draw_pattern(pen: ImageDraw.ImageDraw, pattern: str, size: int, colour: tuple[int, int, int]) -> None:
    step = max(size // 6, 3)
    if pattern == "stripes":
        for x in range(-size, size, step):
            pen.line([(x, size), (x + size, 0)], fill=colour, width=max(size // 20, 1))
    elif pattern == "dots":
        radius = max(size // 24, 1)
        for x in range(step // 2, size, step):
            for y in range(step // 2, size, step):
                pen.ellipse([x - radius, y - radius, x + radius, y + radius], fill=colour)
    elif pattern == "checks":
        cell = max(size // 8, 2)
        for x in range(0, size, cell):
            for y in range((x // cell) % 2 * cell, size, 2 * cell):
                pen.rectangle([x, y, x + cell - 1, y + cell - 1], fill=colour)
