"""Small on-disk datasets with drawn images for the feature tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from rmm.data.schema import write_dataset

COLOURS = {"red": (220, 30, 30), "green": (30, 180, 40), "blue": (30, 60, 220), "yellow": (230, 210, 20)}
SHAPES = ("circle", "square")
CORRUPT_ITEM = 3
EMPTY_TEXT_ITEM = 5
NO_IMAGE_ITEM = 7


def draw_item(colour: str, shape: str, size: int = 64) -> np.ndarray:
    """A coloured circle or square on white, (size, size, 3) uint8."""
    picture = Image.new("RGB", (size, size), (255, 255, 255))
    pen = ImageDraw.Draw(picture)
    box = (size // 8, size // 8, size - size // 8, size - size // 8)
    (pen.ellipse if shape == "circle" else pen.rectangle)(box, fill=COLOURS[colour])
    return np.asarray(picture)


def make_dataset(root: Path, num_items: int = 20) -> Path:
    """Write a dataset dir: item i is a ``COLOURS[i % 4]`` ``SHAPES[i % 2]`` on white; item ``CORRUPT_ITEM`` has a
    corrupt PNG, ``EMPTY_TEXT_ITEM`` an empty title and text, ``NO_IMAGE_ITEM`` no image."""
    (root / "images").mkdir(parents=True)
    rows = []
    names = list(COLOURS)
    for i in range(num_items):
        colour, shape = names[i % len(names)], SHAPES[i % len(SHAPES)]
        image_path: str | None = f"images/{i}.png"
        if i == CORRUPT_ITEM:
            (root / image_path).write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
        elif i == NO_IMAGE_ITEM:
            image_path = None
        else:
            Image.fromarray(draw_item(colour, shape)).save(root / image_path)
        title, text = f"{colour} {shape}", f"A {colour} {shape} drawn on a white background."
        if i == EMPTY_TEXT_ITEM:
            title, text = "", ""
        rows.append({"item_id": i, "source_id": f"s{i}", "title": title, "text": text, "image_path": image_path})
    items = pd.DataFrame(rows)
    interactions = pd.DataFrame({"user_id": [0, 0, 1], "item_id": [0, 1, 2], "timestamp": [1, 2, 3],
                                 "split": [0, 2, 0]})
    users = pd.DataFrame({"user_id": [0, 1], "source_id": ["u0", "u1"]})
    return write_dataset(root, items, interactions, users, {"name": "tiny", "source": "synthetic"})
