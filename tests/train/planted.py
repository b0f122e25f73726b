"""A tiny dataset with planted structure: user u likes only items of group ``u % groups``.

A model that learns anything ranks the user's group first, so test recall far exceeds the random level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rmm.data.schema import TEST, TRAIN, VALID, write_dataset


def write_mmrec_folder(folder: Path, name: str = "baby") -> Path:
    """A small MMRec-format folder ``<folder>/<name>.inter`` (+ ``image_feat.npy``, ``text_feat.npy``): 50 users
    with 8 items of their cluster (``item % 3``), the last two labelled valid and test; 30 items with 16-d image
    and 8-d text features (item 5 without an image vector)."""
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    lines = ["userID\titemID\trating\ttimestamp\tx_label"]
    for user in range(50):
        items = rng.choice(np.arange(user % 3, 30, 3), 8, replace=False)
        lines += [f"{user}\t{item}\t5\t{1000 + t}\t{0 if t < 6 else t - 5}" for t, item in enumerate(items)]
    (folder / f"{name}.inter").write_text("\n".join(lines) + "\n")
    clusters = np.eye(3, dtype=np.float32)[np.arange(30) % 3]
    image = np.hstack([clusters, rng.standard_normal((30, 13))]).astype(np.float32)
    image[5] = 0.0
    np.save(folder / "image_feat.npy", image)
    np.save(folder / "text_feat.npy", np.hstack([clusters, 0.5 * rng.standard_normal((30, 5))]).astype(np.float32))
    return folder


def write_planted_dataset(root: str | Path, num_users: int = 80, num_items: int = 40, groups: int = 4,
                          per_user: int = 8, seed: int = 0) -> Path:
    """Each user gets ``per_user`` items of its group: all but two in train, one valid, one test."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        chosen = rng.choice(np.arange(user % groups, num_items, groups), per_user, replace=False)
        splits = [TRAIN] * (per_user - 2) + [VALID, TEST]
        rows += [(user, int(item), t, split) for t, (item, split) in enumerate(zip(chosen, splits, strict=True))]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])
    items = pd.DataFrame({"item_id": np.arange(num_items), "source_id": [f"i{i}" for i in range(num_items)],
                          "title": "", "text": "", "image_path": None})
    users = pd.DataFrame({"user_id": np.arange(num_users), "source_id": [f"u{u}" for u in range(num_users)]})
    return write_dataset(root, items, interactions, users, {"name": "planted", "source": "test"})
