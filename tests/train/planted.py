"""A tiny dataset with planted structure: user u likes only items of group ``u % groups``.

A model that learns anything ranks the user's group first, so test recall far exceeds the random level.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from rmm.data.schema import TEST, TRAIN, VALID, write_dataset


def write_planted_dataset(root: str | Path, num_users: int = 80, num_items: int = 40, groups: int = 4,
                          per_user: int = 8, seed: int = 0) -> Path:
    """Each user gets ``per_user`` items of its group: all but two in train, one valid, one test."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(num_users):
        chosen = rng.choice(np.arange(user % groups, num_items, groups), per_user, replace=False)
        splits = [TRAIN] * (per_user - 2) + [VALID, TEST]
        rows += [(user, int(item), t, split) for t, (item, split) in enumerate(zip(chosen, splits))]
    interactions = pd.DataFrame(rows, columns=["user_id", "item_id", "timestamp", "split"])
    items = pd.DataFrame({"item_id": np.arange(num_items), "source_id": [f"i{i}" for i in range(num_items)],
                          "title": "", "text": "", "image_path": None})
    users = pd.DataFrame({"user_id": np.arange(num_users), "source_id": [f"u{u}" for u in range(num_users)]})
    return write_dataset(root, items, interactions, users, {"name": "planted", "source": "test"})
