"""Data-parallel scaling: the same Baby-sized training through rmm's Ray Train path with 1, 2 and 4 workers.

    .venv/bin/python bench/scaling.py                              # lightgcn + vbpr, 1/2/4 CPU workers, 2 epochs
    .venv/bin/python bench/scaling.py --models freedom --workers 1 2 --epochs 3
    .venv/bin/python bench/scaling.py --gpus --workers 1 2 4 8     # one GPU per worker (a multi-GPU machine)

Data: bench/train.py's Baby-sized synthetic set (19,445 users, 7,050 items, its ~128k train pairs, 4096-d image
and 384-d text features), written as an rmm dataset directory and feature store. Its generator keeps only the
train pairs, so each user gets one valid and one test item drawn uniformly from the items they did not train on:
evaluation costs what it would (every user ranks every item), its metrics mean nothing.

Each case (model, worker count) runs in a fresh interpreter that calls :func:`rmm.train.run.train_model` in Ray
Train (one worker too: ``launcher: ray_train``) with its own local Ray (``1`` CPU per worker, so 1 torch thread
each; ``--gpus``: also one GPU each) and ``--epochs`` epochs, evaluated after each. What is reported, from the run's
history: every epoch's training time (``epoch s``, the steps and per-epoch work only; the first epoch also pays
DDP's first-step set-up), the evaluation time and the whole ``train_model`` call (Ray start-up, data load, worker
start, training, evaluation, test and record). ``speed-up`` is the first worker count's (1 by default) last epoch
time over this case's, per model. A case that fails (e.g. a worker killed by Ray's memory monitor on a crowded
machine) is a ``failed`` row and the others still run. On a machine with fewer cores than workers the workers share
cores: 4 workers on 2 cores cannot beat 2.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from rmm.config import (
    Config,
    EvalConfig,
    FaultToleranceConfig,
    ModelConfig,
    OutputConfig,
    RayConfig,
    ScalingConfig,
    TrainConfig,
)
from rmm.data.schema import TEST, TRAIN, VALID, load_dataset, write_dataset
from rmm.features.store import write_feature

sys.path.insert(0, str(Path(__file__).resolve().parent))
import train as train_bench  # noqa: E402  (bench/train.py: the Baby-sized data and its generator)

MODELS = ("lightgcn", "vbpr")


def write_baby_dataset(out: Path) -> Config:
    """bench/train.py's Baby data under ``out`` as an rmm dataset + feature store; the config that trains on it."""
    raw = out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    train_bench.make_baby(raw)
    pairs = np.load(raw / "train.npz")
    num_users, num_items = train_bench.BABY["num_users"], train_bench.BABY["num_items"]
    users, items = pairs["users"].astype(np.int64), pairs["items"].astype(np.int64)
    held_users, held_items = held_out_pairs(users, items, num_users, num_items)
    interactions = pd.DataFrame({
        "user_id": np.concatenate([users, held_users]), "item_id": np.concatenate([items, held_items]),
        "timestamp": np.zeros(len(users) + len(held_users), dtype=np.int64),
        "split": np.concatenate([np.full(len(users), TRAIN), np.tile([VALID, TEST], num_users)])})
    cfg = Config(output=OutputConfig(dir=str(out / "out")))
    catalogue = pd.DataFrame({"item_id": np.arange(num_items), "source_id": [f"i{i}" for i in range(num_items)],
                              "title": "", "text": "", "image_path": None})
    people = pd.DataFrame({"user_id": np.arange(num_users), "source_id": [f"u{u}" for u in range(num_users)]})
    dataset = load_dataset(write_dataset(cfg.dataset_dir, catalogue, interactions, people,
                                         {"name": "baby", "source": "bench"}))
    for name in train_bench.FEATURES:
        write_feature(cfg.feature_root, name, np.load(raw / f"{name}.npy"),
                      {"kind": "bench", "items_sha256": dataset.items_sha256})
    return cfg


def held_out_pairs(users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                   seed: int = train_bench.SEED) -> tuple[np.ndarray, np.ndarray]:
    """Two distinct items per user (valid, then test), uniform among the items the user did not train on.

    Returns (2 * num_users,) user ids ``[0, 0, 1, 1, ...]`` and their items."""
    rng = np.random.default_rng(seed)
    trained = set((users * num_items + items).tolist())
    held = np.empty((num_users, 2), dtype=np.int64)
    for user in range(num_users):
        picked: list[int] = []
        while len(picked) < 2:
            item = int(rng.integers(num_items))
            if user * num_items + item not in trained and item not in picked:
                picked.append(item)
        held[user] = picked
    return np.repeat(np.arange(num_users), 2), held.ravel()


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """In the case's own interpreter: one ``train_model`` call with its own local Ray."""
    from rmm.models.registry import model_spec
    from rmm.train.run import train_model

    workers, gpus = case["workers"], case["gpus"]
    base = Config(output=OutputConfig(dir=case["out"]))
    train_cfg = TrainConfig(epochs=case["epochs"], eval=EvalConfig(every=1, patience=case["epochs"]),
                            scaling=ScalingConfig(num_workers=workers, cpus_per_worker=1, use_gpu=gpus,
                                                  launcher="ray_train"),
                            fault_tolerance=FaultToleranceConfig(checkpoint_every=1000))
    cfg = dataclasses.replace(base, train=train_cfg,
                              ray=RayConfig(num_cpus=workers + 1, num_gpus=workers if gpus else 0))
    features = train_bench.FEATURES if model_spec(case["model"]).uses_features else ()
    tic = time.perf_counter()
    record = train_model(cfg, ModelConfig(case["model"], features=features), fresh=True)
    wall_s = time.perf_counter() - tic
    history = record.history
    return {"epoch_s": [h["epoch_seconds"] for h in history], "eval_s": float(np.mean([h["eval_seconds"]
                                                                                       for h in history])),
            "wall_s": wall_s}


def run_in_subprocess(case: dict[str, Any]) -> dict[str, Any]:
    """One case in a fresh interpreter (its own Ray, its own memory); its last stdout line is the result."""
    proc = subprocess.run([sys.executable, __file__, "--case", json.dumps(case)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"case {case} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2, 4])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--gpus", action="store_true", help="one GPU per worker (CUDA, NCCL)")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.gpus:
        import torch

        if max(args.workers) > torch.cuda.device_count():
            parser.error(f"--gpus with {max(args.workers)} workers needs as many GPUs; "
                         f"{torch.cuda.device_count()} visible")
    print(f"machine: {train_bench.machine()}; {'1 GPU' if args.gpus else '1 CPU'} and 1 torch thread per worker; "
          f"load average before: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    with tempfile.TemporaryDirectory(prefix="rmm-scaling-") as tmp:
        tic = time.perf_counter()
        cfg = write_baby_dataset(Path(tmp))
        print(f"data: Baby-sized ({train_bench.BABY['num_users']:,} users, {train_bench.BABY['num_items']:,} items), "
              f"written in {time.perf_counter() - tic:.0f}s; {args.epochs} epochs, evaluated after each\n")
        epochs = " | ".join(f"epoch {e} s" for e in range(1, args.epochs + 1))
        print(f"| model | workers | {epochs} | speed-up (last epoch) | eval s | train_model s |")
        print("|---|---|" + "---|" * args.epochs + "---|---|---|")
        for model in args.models:
            first: float | None = None
            for workers in args.workers:
                try:
                    r = run_in_subprocess({"model": model, "workers": workers, "epochs": args.epochs,
                                           "gpus": args.gpus, "out": str(cfg.out_dir)})
                except RuntimeError as err:  # e.g. Ray's OOM monitor killed a worker: the other cases still run
                    reason = [line for line in str(err).splitlines() if line.strip()][-1]
                    print(f"| {model} | {workers} | failed: {reason[:200]} |", flush=True)
                    continue
                first = first or r["epoch_s"][-1]
                times = " | ".join(f"{s:.2f}" for s in r["epoch_s"])
                print(f"| {model} | {workers} | {times} | {first / r['epoch_s'][-1]:.2f}x | {r['eval_s']:.1f} | "
                      f"{r['wall_s']:.0f} |", flush=True)
    print(f"\nload average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
