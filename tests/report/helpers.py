"""A crafted output directory: results.json plus run directories with per-user test metrics and histories."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rmm.runs import PER_USER_FILE, RunRecord, record_runs, run_dir, write_run_record

METRICS = ("recall@20", "ndcg@20")


def per_user(recall: np.ndarray, ndcg: np.ndarray, users: Sequence[int] | None = None, k: int = 20) -> pd.DataFrame:
    users = np.arange(len(recall)) if users is None else np.asarray(users)
    return pd.DataFrame({"user_id": users.astype(np.int64), f"recall@{k}": recall, f"ndcg@{k}": ndcg})


def record(name: str, model: str, features: Sequence[str] = (), valid: float = 0.0, test: float = 0.0, k: int = 20,
           **extra: Any) -> RunRecord:
    """A bare results.json record with validation and test recall@k given (ndcg@k half of each)."""
    return RunRecord.from_dict({
        "run_name": name, "stage": "train", "model": model, "features": list(features), "fusion": None,
        "config": {"train": {"eval": {"metric": f"recall@{k}"}}},
        "valid": {f"recall@{k}": valid, f"ndcg@{k}": valid / 2}, "test": {f"recall@{k}": test, f"ndcg@{k}": test / 2},
        **extra}, "a test record")


def write_run(out: Path, name: str, model: str, features: Sequence[str], table: pd.DataFrame,
              curve: Sequence[float] = (0.1, 0.2, 0.3), record: bool = True, k: int = 20,
              **extra: Any) -> RunRecord:
    """Write ``runs/<name>/{per_user_test.parquet,run.json}`` like a training run evaluated at cut-off ``k``;
    add the record to results.json when ``record`` (a sweep's trials are only in their run directories)."""
    recall, ndcg = f"recall@{k}", f"ndcg@{k}"
    history = [{"epoch": 2 * (i + 1), "loss": 0.5, f"valid/{recall}": v, f"valid/{ndcg}": v / 2}
               for i, v in enumerate(curve)]
    best = int(np.argmax(curve))
    run = RunRecord(run_name=name, model=model, label=name, features=tuple(features),
                    config={"train": {"eval": {"metric": recall}}}, best_epoch=int(history[best]["epoch"]),
                    valid={recall: curve[best], ndcg: curve[best] / 2},
                    test={m: float(table[m].mean()) for m in (recall, ndcg)}, train_seconds=1.0,
                    history=tuple(history))
    directory = run_dir(out, name)
    directory.mkdir(parents=True, exist_ok=True)
    table.to_parquet(directory / PER_USER_FILE, index=False)
    write_run_record(directory, run)
    run = dataclasses.replace(run, **extra)
    if record:
        record_runs(out, [run])
    return run
