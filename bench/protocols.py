"""Strict vs MMRec protocol on a synthetic MMRec-format dataset, and cold-start items, over several seeds.

    .venv/bin/python bench/protocols.py                       # ~30 min on 2 CPU cores
    .venv/bin/python bench/protocols.py --models lightgcn vbpr --seeds 1 2 --epochs 10

The dataset is rmm's synthetic world (users with attribute tastes, items with attributes, popularity) written
out as an MMRec folder: ``synthetic.inter`` (``userID itemID rating timestamp x_label``, x_label by MMRec's
random per-user rule) with ``image_feat.npy`` / ``text_feat.npy`` (noisy one-hot codes of the image-side and
text-side attributes, as a CNN / sentence encoder would partly recover them).

Three runs of ``rmm run`` (stages data + train, each model once per seed through Ray Train, 1 worker):

- ``strict`` and ``mmrec``: the same folder with ``split: predefined`` (the shipped x_label, so both protocols
  see one split) and the same explicit train budget (epochs, batch, learning rate, early stopping), so the gap
  between the two tables is the protocol's conventions alone: test masking of valid items, negatives from train
  items, the models' MMRec switches (kNN self-loops, LATTICE's D^-1 (A + I), FREEDOM's modality weights,
  initialisation, trainable features, EmbLoss).
- ``cold``: the strict protocol with ``dataset.cold_items`` (a share of items held out of train entirely;
  ``split: mmrec_random``), where only content can score the held-out items.

Prints Markdown tables of test Recall@20 / NDCG@20 (mean ± std over seeds) per model and protocol, and the cold
table; ``--out`` keeps the run directories.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from rmm.config import DatasetConfig, SyntheticConfig
from rmm.data import synthetic
from rmm.data.preprocess import Skips, preprocess

CONTENT = ("vbpr", "mmgcn", "grcn", "lattice", "freedom", "bm3", "lgmrec")
MODELS = ("bprmf", "lightgcn", *CONTENT)
FEATURES = ["mmrec_image", "mmrec_text"]
METRICS = ("recall@20", "ndcg@20")


def write_mmrec_folder(folder: Path, num_users: int, num_items: int, per_user: int, seed: int) -> dict[str, int]:
    """The synthetic world as an MMRec dataset folder; returns its counts."""
    cfg = DatasetConfig(split="mmrec_random", seed=seed, user_core=5, item_core=5,
                        synthetic=SyntheticConfig(num_users=num_users, num_items=num_items,
                                                  interactions_per_user=per_user))
    raw = synthetic.generate(cfg)
    prepared = preprocess(raw, cfg, Skips())
    inter = prepared.interactions
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"userID": inter["user_id"], "itemID": inter["item_id"], "rating": 1,
                  "timestamp": inter["timestamp"], "x_label": inter["split"]}).to_csv(
        folder / "synthetic.inter", sep="\t", index=False)
    items = prepared.items
    rng = np.random.default_rng(seed)
    for file, attributes in (("image_feat.npy", synthetic.IMAGE_ATTRIBUTES),
                             ("text_feat.npy", synthetic.TEXT_ATTRIBUTES)):
        codes = pd.get_dummies(items[list(attributes)].astype(str)).to_numpy(np.float32)
        np.save(folder / file, codes + 0.3 * rng.standard_normal(codes.shape).astype(np.float32))
    return {"users": int(inter["user_id"].nunique()), "items": len(items), "interactions": len(inter)}


def config(folder: Path, out: Path, protocol: str, models: Sequence[str], args: argparse.Namespace,
           cold: float = 0.0) -> dict:
    train = {"epochs": args.epochs, "batch_size": 512, "learning_rate": 1e-3 * args.lr_scale,
             "seeds": list(args.seeds), "eval": {"every": 2, "patience": 5, "topk": [10, 20], "metric": "recall@20"},
             "scaling": {"num_workers": 1, "cpus_per_worker": 1}, "fault_tolerance": {"checkpoint_every": 10}}
    dataset = {"name": "synthetic", "source": "mmrec", "path": str(folder), "user_core": 0, "item_core": 0,
               "split": "predefined" if not cold else "mmrec_random", "seed": 7}
    if cold:
        dataset["cold_items"] = cold
    return {"protocol": protocol, "stages": ["data", "train"], "dataset": dataset, "train": train,
            "model": [{"name": m, **({"features": FEATURES} if m in CONTENT else {})} for m in models],
            "ray": {"num_cpus": 2, "dashboard": False}, "output": {"dir": str(out)}}


def run(raw: dict, path: Path) -> tuple[list[dict], float]:
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    tic = time.monotonic()
    subprocess.run([sys.executable, "-m", "rmm.cli", "run", str(path)], check=True)
    runs = json.loads((Path(raw["output"]["dir"]) / "results.json").read_text())["runs"]
    return runs, time.monotonic() - tic


def summary(runs: Sequence[dict], key: str = "test") -> dict[str, dict[str, tuple[float, float, int]]]:
    """model -> metric -> (mean, std, number of seeds) of the records' ``key`` metrics."""
    table: dict[str, dict[str, list[float]]] = {}
    for run_ in runs:
        for metric in METRICS:
            if metric in run_.get(key, {}):
                table.setdefault(run_["model"], {}).setdefault(metric, []).append(run_[key][metric])
    return {model: {m: (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0, len(v))
                    for m, v in metrics.items()} for model, metrics in table.items()}


def cell(stats: dict[str, tuple[float, float, int]] | None, metric: str) -> str:
    if not stats or metric not in stats:
        return "n/a"
    mean, std, _ = stats[metric]
    return f"{mean:.4f} ± {std:.4f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3])
    parser.add_argument("--epochs", type=int, default=40)
    parser.add_argument("--lr-scale", type=float, default=5.0, help="learning rate = 1e-3 x this")
    parser.add_argument("--users", type=int, default=600)
    parser.add_argument("--items", type=int, default=400)
    parser.add_argument("--per-user", type=int, default=20)
    parser.add_argument("--cold", type=float, default=0.2, help="share of cold items (0 skips that part)")
    parser.add_argument("--out", type=Path, default=None, help="keep the outputs here (default: a temp dir)")
    args = parser.parse_args()
    root = args.out or Path(tempfile.mkdtemp(prefix="rmm-bench-protocols-"))
    counts = write_mmrec_folder(root / "mmrec", args.users, args.items, args.per_user, seed=11)
    results, seconds = {}, {}
    for protocol in ("strict", "mmrec"):
        raw = config(root / "mmrec", root / protocol, protocol, args.models, args)
        runs, seconds[protocol] = run(raw, root / f"{protocol}.yaml")
        results[protocol] = summary(runs)
    cold = None
    if args.cold:
        models = [m for m in args.models if m in ("bprmf", "lightgcn", "vbpr", "lattice", "freedom")]
        runs, seconds["cold"] = run(config(root / "mmrec", root / "cold", "strict", models, args, cold=args.cold),
                                    root / "cold.yaml")
        cold = (summary(runs, "test_cold"), summary(runs))

    print(f"\n`{' '.join(sys.argv)}` on {platform.node()} ({platform.machine()}, {platform.processor() or '?'}); "
          f"dataset {counts['users']} users, {counts['items']} items, {counts['interactions']} interactions "
          f"(MMRec-format folder, x_label by MMRec's random rule); seeds {args.seeds}; "
          f"wall time {', '.join(f'{k} {v / 60:.1f} min' for k, v in seconds.items())}\n")
    print("| model | strict Recall@20 | mmrec Recall@20 | strict NDCG@20 | mmrec NDCG@20 |")
    print("|---|---|---|---|---|")
    for model in args.models:
        print(f"| {model} | {cell(results['strict'].get(model), 'recall@20')} | "
              f"{cell(results['mmrec'].get(model), 'recall@20')} | {cell(results['strict'].get(model), 'ndcg@20')} | "
              f"{cell(results['mmrec'].get(model), 'ndcg@20')} |")
    if cold is not None:
        cold_stats, all_stats = cold
        print(f"\nCold-start items ({args.cold:.0%} of items never in train; strict protocol, mmrec_random split):\n")
        print("| model | cold Recall@20 | cold NDCG@20 | all-items Recall@20 |")
        print("|---|---|---|---|")
        for model in sorted(all_stats, key=lambda m: args.models.index(m)):
            id_only = model in ("bprmf", "lightgcn")
            print(f"| {model} | {'n/a (ID only)' if id_only else cell(cold_stats.get(model), 'recall@20')} | "
                  f"{'n/a (ID only)' if id_only else cell(cold_stats.get(model), 'ndcg@20')} | "
                  f"{cell(all_stats.get(model), 'recall@20')} |")


if __name__ == "__main__":
    main()
