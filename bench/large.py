"""Large graphs on one box: every model at Amazon-Elec size, and LightGCN / FREEDOM / LATTICE at 10M interactions.

    .venv/bin/python bench/large.py elec                          # every trainable model, one real epoch each
    .venv/bin/python bench/large.py 10m --steps 40                # 1M users, 200k items, 10M interactions
    .venv/bin/python bench/large.py elec --models lightgcn --data-dir /tmp/large/elec   # reuse generated data

Shapes: ``elec`` is MMRec's Elec (192,403 users, 63,001 items, 1,689,188 interactions, 4,096-d image and 384-d
text features); ``10m`` is 1,000,000 users, 200,000 items, 10,000,000 interactions, 512-d image and 384-d text.
The data are synthetic (see :func:`make_dataset`): items in latent clusters with a Zipf popularity, users who draw
most of their items from one home cluster, features that are noisy projections of the item latents (the image
one non-negative like a CNN's, the text one unit-norm like a sentence encoder's). Each user's interactions are
split at random: 10% (at least 1) valid, 10% (at least 1) test, the rest train.

Every model runs in its own fresh subprocess with ``--threads`` torch threads (default 1), so its peak memory
(``VmHWM``, :func:`bench.train.peak_rss_mib`) is its own. Times are printed as wall s (CPU s): the process's CPU
seconds (all threads) are its work, the wall seconds also its wait for a core on a loaded machine. What is
timed, all with rmm's own functions:

- ``set-up s``: the normalised adjacency (:meth:`rmm.data.graph.TrainGraph.norm_adj`), the item-item kNN
  graphs (:func:`rmm.data.knn_cache.cached_knn_graph`; always a cold build here: the cache dir is new per case)
  and :func:`rmm.models.base.build_model`. ``kNN s`` is the kNN part of it.
- ``epoch s``: the model's ``start_epoch`` (FREEDOM's edge pruning, LATTICE's learned-graph rebuild; also shown
  alone as ``per-epoch work s``), the sampler's epoch (:meth:`rmm.train.loop.BPRSampler.epoch`) and
  :func:`rmm.train.loop._train_epoch` over the epoch's batches (``--batch-size``, 2,048 by default; Adam).
  With ``--steps N`` only ``--warmup`` and then N more batches go through ``_train_epoch`` and the epoch is
  extrapolated as per-epoch work + sampling + the warm-up steps as measured (LATTICE's first step learns its
  graph) + the remaining steps x the mean of the N (marked "extrap." in the table).
- ``--knn-placeholder``: k random neighbours per item, normalised as the model's ``KNNSpec`` asks, stand in for
  the kNN graphs (``kNN s`` then reads "placeholder"): a step costs the same on any graph of that size, so the
  steps can be timed where the I^2 d similarity build does not fit; the metrics then mean nothing.
- ``eval s``: :func:`rmm.train.loop.evaluate_split` on the valid split: every item scored, train items masked,
  Recall/NDCG@20. With ``--eval-users N`` it runs on N random valid users and the time is scaled to all of them
  (marked "extrap."; the metrics are then those of the sample): the final embeddings (``model.scorer()``, once
  per evaluation) are timed alone and counted once, the rest scaled by valid users / N.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

sys.path.insert(0, str(Path(__file__).resolve().parent))
from rmm.config import EvalConfig, ModelConfig, TrainConfig  # noqa: E402
from rmm.data.graph import KNNSpec, TrainGraph, UserItems, normalize_graph  # noqa: E402
from rmm.data.knn_cache import cached_knn_graph  # noqa: E402
from rmm.models.base import build_model, model_params  # noqa: E402
from rmm.models.registry import MODELS, get_model_class, model_spec  # noqa: E402
from rmm.train.cpu import prepare_cpu_process  # noqa: E402
from rmm.train.loop import BPRSampler, EvalSplit, _train_epoch, evaluate_split  # noqa: E402
from train import machine, peak_rss_mib  # noqa: E402  (bench/train.py, a sibling script)

SHAPES: dict[str, dict[str, Any]] = {
    "elec": {"num_users": 192_403, "num_items": 63_001, "num_interactions": 1_689_188,
             "dims": {"image": 4096, "text": 384}},
    "10m": {"num_users": 1_000_000, "num_items": 200_000, "num_interactions": 10_000_000,
            "dims": {"image": 512, "text": 384}},
}
DEFAULT_MODELS = {"elec": ("bprmf", "lightgcn", "vbpr", "mmgcn", "grcn", "lattice", "freedom", "bm3", "lgmrec"),
                  "10m": ("lightgcn", "freedom", "lattice")}
FEATURES = ("image", "text")
BATCH_SIZE = 2048
SEED = 2024
TOPK = (20,)
TRAIN, VALID, TEST = 0, 1, 2


# ---------------------------------------------------------------------------------------------------- data


def make_dataset(out: Path, shape: dict[str, Any], seed: int = SEED, clusters: int = 200,
                 latent_dim: int = 32) -> None:
    """Write ``pairs.npz`` (user, item, split of every interaction) and one ``<feature>.npy`` per modality.

    Everything is vectorised numpy (10M interactions in about a minute): a Gumbel top-k over all items per user,
    as bench/train.py draws Baby, would score 2e11 user-item pairs at 10M.
    """
    rng = np.random.default_rng(seed)
    num_users, num_items = shape["num_users"], shape["num_items"]
    item_cluster = rng.choice(clusters, num_items, p=rng.dirichlet(np.ones(clusters)))
    centroids = rng.standard_normal((clusters, latent_dim)).astype(np.float32)
    item_latent = centroids[item_cluster] + 0.6 * rng.standard_normal((num_items, latent_dim), dtype=np.float32)
    counts = _user_counts(rng, num_users, shape["num_interactions"])
    users = np.repeat(np.arange(num_users), counts)
    items = _draw_items(rng, users, item_cluster, clusters)
    split = _split(rng, users, counts)
    np.savez(out / "pairs.npz", users=users.astype(np.int64), items=items, split=split)
    for name, dim in shape["dims"].items():
        _write_features(out / f"{name}.npy", rng, item_latent, dim, nonnegative=name == "image")


def _user_counts(rng: np.random.Generator, num_users: int, total: int) -> np.ndarray:
    """5-core-like interaction counts summing to exactly ``total``: 5 each plus a skewed share of the rest."""
    return 5 + rng.multinomial(total - 5 * num_users, rng.dirichlet(np.full(num_users, 0.5)))


def _draw_items(rng: np.random.Generator, users: np.ndarray, item_cluster: np.ndarray, clusters: int,
                home_share: float = 0.75) -> np.ndarray:
    """Distinct items per user: ``home_share`` of the draws from the user's home cluster, the rest from the whole
    catalogue, both weighted by a Zipf popularity; repeated (user, item) pairs are redrawn until none is left."""
    num_items = len(item_cluster)
    popularity = (rng.permutation(num_items) + 1.0) ** -0.8
    order = np.argsort(item_cluster, kind="stable")  # items grouped by cluster
    cumulative = np.cumsum(popularity[order])
    bounds = np.concatenate([[0.0], cumulative])[np.searchsorted(item_cluster[order], np.arange(clusters + 1))]
    home = rng.integers(clusters, size=users.max() + 1)[users]

    def draw(rows: np.ndarray) -> np.ndarray:
        cluster = np.where(rng.random(len(rows)) < home_share, home[rows], -1)
        low = np.where(cluster >= 0, bounds[np.maximum(cluster, 0)], 0.0)
        high = np.where(cluster >= 0, bounds[np.maximum(cluster, 0) + 1], cumulative[-1])
        at = np.searchsorted(cumulative, low + rng.random(len(rows)) * (high - low), side="right")
        return order[np.minimum(at, num_items - 1)]

    items = draw(np.arange(len(users)))
    while True:
        keys = users * num_items + items
        _, first = np.unique(keys, return_index=True)
        repeated = np.setdiff1d(np.arange(len(keys)), first, assume_unique=True)
        if not len(repeated):
            return items
        items[repeated] = draw(repeated)


def _split(rng: np.random.Generator, users: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Per user, in a random order: 10% (at least 1) valid, 10% (at least 1) test, the rest train (int8 codes)."""
    order = np.lexsort((rng.random(len(users)), users))  # users stay grouped, random order within each
    start = np.repeat(np.cumsum(counts) - counts, counts)
    position = np.empty(len(users), dtype=np.int64)
    position[order] = np.arange(len(users)) - start
    held = np.maximum(1, counts // 10)[users]
    split = np.full(len(users), TRAIN, dtype=np.int8)
    split[position >= counts[users] - 2 * held] = VALID
    split[position >= counts[users] - held] = TEST
    return split


def _write_features(path: Path, rng: np.random.Generator, latent: np.ndarray, dim: int, *,
                    nonnegative: bool, rows: int = 8192) -> None:
    """Noisy random projection of the item latents, written in row blocks (no full-size temporaries)."""
    projection = rng.standard_normal((latent.shape[1], dim), dtype=np.float32) / math.sqrt(latent.shape[1])
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(len(latent), dim))
    for start in range(0, len(latent), rows):
        block = latent[start:start + rows] @ projection
        block += (0.5 if nonnegative else 1.0) * rng.standard_normal(block.shape, dtype=np.float32)
        if nonnegative:
            np.maximum(block, 0.0, out=block)
        else:
            block /= np.linalg.norm(block, axis=1, keepdims=True)
        out[start:start + rows] = block
    out.flush()


# ------------------------------------------------------------------------------------------------- one case


class FirstBatches:
    """A sampler that hands ``_train_epoch`` a fixed slice of an already drawn epoch (for timed partial epochs)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def epoch(self, *args: Any, **kwargs: Any) -> list:
        return self.batches


def timed(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float, float]:
    """``fn``'s result, wall seconds and this process's CPU seconds (all threads): on a machine shared under
    high load the CPU seconds are the work, the wall seconds also the wait for a core."""
    tic, cpu = time.perf_counter(), time.process_time()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - tic, time.process_time() - cpu


def load_pairs(data_dir: Path, num_users: int, num_items: int) -> tuple[TrainGraph, EvalSplit]:
    """The train graph (distinct pairs, as ``TrainGraph.from_dataset`` keeps them) and the valid split."""
    pairs = np.load(data_dir / "pairs.npz")
    users, items, split = (torch.from_numpy(pairs[k]) for k in ("users", "items", "split"))
    train = split == TRAIN
    graph = TrainGraph(num_users, num_items, users=users[train].long(), items=items[train].long())
    valid = split == VALID
    truth = UserItems.from_pairs(users[valid], items[valid], num_users, num_items)
    exclude = UserItems.from_pairs(users[train], items[train], num_users, num_items)
    eval_users = torch.nonzero(truth.counts(torch.arange(num_users))).flatten()
    return graph, EvalSplit(users=eval_users, truth=truth, exclude=exclude)


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """In the case's own subprocess: set-up, one epoch (or timed steps), one valid evaluation."""
    torch.set_num_threads(case["threads"])
    prepare_cpu_process()  # as rmm.train.loop.fit
    shape = SHAPES[case["shape"]]
    data_dir = Path(case["data_dir"])
    name = case["model"]
    spec = model_spec(name)
    model_cfg = ModelConfig(name, features=FEATURES if spec.uses_features else (), params=spec.config_class())
    features = {m: torch.from_numpy(np.load(data_dir / f"{m}.npy")) for m in model_cfg.features}
    (graph, valid), load_s, _ = timed(load_pairs, data_dir, shape["num_users"], shape["num_items"])
    rss_loaded = peak_rss_mib()
    torch.manual_seed(SEED)
    model, setup_s, setup_cpu_s, knn_s = set_up(model_cfg, graph, features, case["cache_dir"],
                                                case.get("knn_placeholder", False))
    batch_size = case.get("batch_size", BATCH_SIZE)
    train_cfg = TrainConfig(epochs=1, batch_size=batch_size, seed=SEED, eval=EvalConfig(topk=TOPK))
    optimizer = torch.optim.Adam(model.parameters(), lr=train_cfg.learning_rate)
    sampler = BPRSampler(graph, train_cfg.negatives)
    _, epoch_work_s, epoch_work_cpu = timed(model.start_epoch, SEED, 1)
    batches, sample_s, sample_cpu = timed(sampler.epoch, SEED, 1, batch_size)
    out: dict[str, Any] = {"model": name, "train_pairs": len(graph.users), "load_s": load_s,
                           "rss_loaded_mib": rss_loaded, "setup_s": setup_s, "setup_cpu_s": setup_cpu_s,
                           "knn_s": knn_s, "epoch_work_s": epoch_work_s, "sample_s": sample_s,
                           "steps_per_epoch": len(batches)}
    steps, warm, warm_s, warm_cpu = len(batches), [], 0.0, 0.0
    if case["steps"]:
        warm = batches[:case["warmup"]]
        batches = batches[case["warmup"]:case["warmup"] + case["steps"]]
    if warm:
        _, warm_s, warm_cpu = timed(_train_epoch, model, optimizer, FirstBatches(warm), train_cfg, 1, 0, 1, "cpu")
    loss, steps_s, steps_cpu = timed(_train_epoch, model, optimizer, FirstBatches(batches), train_cfg, 1, 0, 1,
                                     "cpu")
    scale = (steps - len(warm)) / len(batches) if case["steps"] else 1.0
    # warm-up steps are real steps of the epoch: counted as measured (LATTICE's first one learns its graph)
    out.update(timed_steps=len(batches), step_s=steps_s / len(batches), extrapolated=scale > 1,
               epoch_s=epoch_work_s + sample_s + warm_s + scale * steps_s,
               epoch_cpu_s=epoch_work_cpu + sample_cpu + warm_cpu + scale * steps_cpu)
    del batches
    out["loss"] = loss
    out["rss_after_epoch_mib"] = peak_rss_mib()
    out.update(evaluate_valid(model, valid, case["eval_users"]))
    out["peak_rss_mib"] = peak_rss_mib()
    return out


def set_up(model_cfg: ModelConfig, graph: TrainGraph, features: dict[str, Tensor], cache_dir: str,
           knn_placeholder: bool = False) -> tuple[Any, float, float, float]:
    """The model built as ``fit`` builds it: the normalised adjacency, the kNN graphs through the (here always
    cold) disk cache, ``build_model``. Returns the model, wall and CPU seconds, and the kNN part's wall seconds
    (NaN with ``knn_placeholder``: random graphs of the kNN graphs' size stand in, see :func:`placeholder_graph`)."""
    tic, cpu = time.perf_counter(), time.process_time()
    graph.norm_adj()
    spec = get_model_class(model_cfg.name).item_graph_spec(model_params(model_cfg))
    item_graphs, knn_s = None, 0.0
    if spec is not None and knn_placeholder:
        item_graphs, knn_s = {m: placeholder_graph(graph.num_items, spec) for m in features}, math.nan
    elif spec is not None:
        item_graphs, knn_s, _ = timed(lambda: {m: cached_knn_graph(x, spec, cache_dir=cache_dir, name=m)
                                               for m, x in features.items()})
    model = build_model(model_cfg, graph, features, item_graphs=item_graphs)
    return model, time.perf_counter() - tic, time.process_time() - cpu, knn_s


def placeholder_graph(num_items: int, spec: KNNSpec, seed: int = SEED) -> Tensor:
    """k random other items per item, normalised as ``spec`` asks: the kNN graph's size and sparsity without its
    I^2 d similarity cost, so that a loaded machine can time the training steps that read it (every step's cost
    depends on the graph's shape, not on which items are neighbours)."""
    generator = torch.Generator().manual_seed(seed)
    rows = torch.arange(num_items).repeat_interleave(spec.k)
    cols = (rows + torch.randint(1, num_items, (len(rows),), generator=generator)) % num_items
    adj = torch.sparse_coo_tensor(torch.stack([rows, cols]), torch.rand(len(rows), generator=generator),
                                  (num_items, num_items), check_invariants=False)  # in range by construction
    return normalize_graph(adj, spec.normalization, binary=spec.binary)


def evaluate_valid(model: Any, valid: EvalSplit, sample: int) -> dict[str, Any]:
    """Recall/NDCG@20 on the valid split (or ``sample`` random valid users), time scaled to all valid users."""
    split = valid
    if sample and sample < len(valid.users):
        chosen = torch.randperm(len(valid.users), generator=torch.Generator().manual_seed(SEED))[:sample]
        split = EvalSplit(users=valid.users[torch.sort(chosen).values], truth=valid.truth, exclude=valid.exclude)
    per_user, eval_s, eval_cpu = timed(evaluate_split, model, split, TOPK)
    scale = len(valid.users) / len(split.users)
    fixed_s = fixed_cpu = 0.0
    if scale > 1:  # the final embeddings are computed once per evaluation, whatever the number of users
        model.eval()
        with torch.no_grad():
            _, fixed_s, fixed_cpu = timed(model.scorer)
        model.train()
    return {"eval_users": len(split.users), "valid_users": len(valid.users), "scorer_s": fixed_s,
            "eval_s": fixed_s + (eval_s - fixed_s) * scale, "eval_cpu_s": fixed_cpu + (eval_cpu - fixed_cpu) * scale,
            "eval_extrapolated": split is not valid,
            "recall@20": float(per_user["recall@20"].mean()), "ndcg@20": float(per_user["ndcg@20"].mean())}


# -------------------------------------------------------------------------------------------------- driver


def run_in_subprocess(args: list[str], log_path: Path) -> dict[str, Any] | str:
    """Run a case in a fresh interpreter (stderr to ``log_path``); its last stdout line is the result, or the
    error's last line when it failed."""
    with open(log_path, "a") as log:
        proc = subprocess.run([sys.executable, __file__, *args], stdout=subprocess.PIPE, stderr=log, text=True)
    if proc.returncode != 0:
        tail = log_path.read_text().strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
        return f"failed (exit {proc.returncode}): {tail[0][:200]}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def wait_for_memory(need_gib: float, log_path: Path) -> None:
    """Block until ``need_gib`` of memory is available (the machine is shared), re-checking every 30 s."""
    while True:
        available = int(next(line for line in Path("/proc/meminfo").read_text().splitlines()
                             if line.startswith("MemAvailable")).split()[1]) / 2**20
        if available >= need_gib:
            return
        with open(log_path, "a") as log:
            print(f"{datetime.now(UTC):%H:%M:%S} waiting: {available:.1f} GiB available, need "
                  f"{need_gib:.0f}", file=log, flush=True)
        time.sleep(30)


def loadavg() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def row(r: dict[str, Any] | str, name: str) -> str:
    """One markdown table row of a case's result."""
    if isinstance(r, str):
        return f"| {name} | {r} | | | | | | | |"
    epoch = f"{r['epoch_s']:,.0f} ({r['epoch_cpu_s']:,.0f})" + (f" extrap. from {r['timed_steps']} steps"
                                                                if r["extrapolated"] else "")
    evaluation = f"{r['eval_s']:,.0f} ({r['eval_cpu_s']:,.0f})" + (
        f" extrap. from {r['eval_users']:,} users" if r["eval_extrapolated"] else "")
    knn = "placeholder" if math.isnan(r["knn_s"]) else f"{r['knn_s']:,.1f}"
    return (f"| {name} | {r['setup_s']:,.1f} ({r['setup_cpu_s']:,.1f}) | {knn} | "
            f"{r['epoch_work_s']:,.2f} | {epoch} | "
            f"{1000 * r['step_s']:,.0f} x {r['steps_per_epoch']:,} | {evaluation} | "
            f"{r['recall@20']:.4f} / {r['ndcg@20']:.4f} | {r['peak_rss_mib'] / 1024:,.1f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("shape", choices=sorted(SHAPES))
    parser.add_argument("--models", nargs="+", help="default: every trainable model (elec), or the 10M three")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per case")
    parser.add_argument("--steps", type=int, default=0, help="timed steps, epoch extrapolated (0: a full epoch)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps before --steps")
    parser.add_argument("--batch-size", type=int, default=BATCH_SIZE,
                        help="BPR batch: full-graph models propagate the whole graph once per batch")
    parser.add_argument("--eval-users", type=int, default=0, help="evaluate a random sample (0: every valid user)")
    parser.add_argument("--data-dir", help="generated data to reuse (created when missing)")
    parser.add_argument("--knn-placeholder", action="store_true",
                        help="random k-neighbour item graphs instead of the kNN build (times the steps only)")
    parser.add_argument("--need-gib", type=float, default=14.0, help="available memory to wait for per case")
    parser.add_argument("--log", default="/tmp/large/large.log", help="stderr of the cases")
    parser.add_argument("--case", help=argparse.SUPPRESS)
    parser.add_argument("--make-data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(json.loads(args.case))))
        return
    if args.make_data:
        tic = time.perf_counter()
        make_dataset(Path(args.make_data), SHAPES[args.shape])
        print(json.dumps({"seconds": time.perf_counter() - tic, "peak_rss_mib": peak_rss_mib()}))
        return
    run_table(args)


def run_table(args: argparse.Namespace) -> None:
    """Generate (or reuse) the data, then one subprocess per model, printing each row as it finishes."""
    log_path = Path(args.log)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    shape = SHAPES[args.shape]
    models = args.models or [m for m in DEFAULT_MODELS[args.shape] if m in MODELS]
    print(f"machine: {machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; load average {loadavg()}")
    with tempfile.TemporaryDirectory(prefix="rmm-large-") as tmp:
        data_dir = Path(args.data_dir) if args.data_dir else Path(tmp) / "data"
        if not (data_dir / "pairs.npz").exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            made = run_in_subprocess([args.shape, "--make-data", str(data_dir)], log_path)
            if isinstance(made, str):
                raise RuntimeError(f"data generation {made}; see {log_path}")
            print(f"data generated in {made['seconds']:.0f}s (peak {made['peak_rss_mib'] / 1024:.1f} GiB)")
        split = np.load(data_dir / "pairs.npz")["split"]
        print(f"data: {shape['num_users']:,} users, {shape['num_items']:,} items, {len(split):,} interactions "
              f"(train {int((split == TRAIN).sum()):,} / valid {int((split == VALID).sum()):,} / test "
              f"{int((split == TEST).sum()):,}), " + ", ".join(f"{m} {d:,}-d" for m, d in shape["dims"].items())
              + f"; batch {args.batch_size:,}, Adam, {args.threads} torch thread(s) per case\n")
        print("wall s (CPU s of the process in brackets: the work, without the wait for a core)\n")
        print("| model | set-up s | kNN s | per-epoch work s | epoch s | step ms x steps | eval s (valid) | "
              "Recall@20 / NDCG@20 | peak GiB |")
        print("|---|---|---|---|---|---|---|---|---|", flush=True)
        for name in models:
            wait_for_memory(args.need_gib, log_path)
            case = {"shape": args.shape, "model": name, "data_dir": str(data_dir), "threads": args.threads,
                    "steps": args.steps, "warmup": args.warmup, "eval_users": args.eval_users,
                    "cache_dir": str(Path(tmp) / f"knn-{name}"), "knn_placeholder": args.knn_placeholder,
                    "batch_size": args.batch_size}
            with open(log_path, "a") as log:
                print(f"{datetime.now(UTC):%H:%M:%S} start {args.shape} {name} (load {loadavg()})",
                      file=log, flush=True)
            result = run_in_subprocess([args.shape, "--case", json.dumps(case)], log_path)
            print(row(result, name) + f" <!-- load {loadavg()} -->", flush=True)
    print(f"\nload average after: {loadavg()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC")


if __name__ == "__main__":
    main()
