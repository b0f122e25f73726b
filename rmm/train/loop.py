"""The training loop in plain torch: BPR epochs, full-ranking validation, early stopping, final test.

No Ray here: ``rmm.train.ray_trainer`` runs :func:`fit` inside Ray Train workers, where ``torch.distributed`` is
initialised, and ``rmm.train.in_process`` runs a one-worker run in the command's own process. Under a process group
each rank trains on its shard of every epoch (DDP averages the gradients) and evaluates its share of the users;
per-user results are summed across ranks into one table, so the metrics do not depend on the number of workers.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
from torch import Tensor, nn

from rmm.config import ModelConfig, TrainConfig
from rmm.data.graph import TrainGraph, UserItems
from rmm.data.knn_cache import cached_knn_graph, cached_user_graph
from rmm.data.preprocess import cold_item_ids
from rmm.data.schema import TEST, TRAIN, VALID, Dataset
from rmm.errors import ConfigError, DataError, DivergedError
from rmm.eval.metrics import evaluate, metric_names
from rmm.models.base import BPRBatch, Recommender, build_model, model_params
from rmm.models.registry import get_model_class
from rmm.train.cpu import prepare_cpu_process

log = logging.getLogger(__name__)

STATE_FILE = "state.pt"
#: Beside ``state.pt`` in a checkpoint: ``{"epoch": N}``, readable without loading the weights.
CHECKPOINT_INFO_FILE = "checkpoint.json"

#: ``train.precision`` -> the autocast dtype of the training step (None: plain float32). Evaluation always
#: scores in float32: bfloat16's 8-bit mantissa would tie and reorder close scores in the full ranking.
PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}

#: ``report(metrics, checkpoint_dir)``, called on every rank after each evaluation; ``checkpoint_dir`` (rank 0
#: only, every ``checkpoint_every`` epochs and at the end) holds ``state.pt`` and is deleted after the call.
ReportFn = Callable[[dict[str, float], str | None], None]


@dataclass(frozen=True, eq=False)
class EvalSplit:
    """The users of one evaluation split, their relevant items and the items to mask when ranking."""

    users: Tensor
    truth: UserItems
    exclude: UserItems

    @classmethod
    def from_dataset(cls, ds: Dataset, split: int, mask_valid: bool = True,
                     items: np.ndarray | None = None) -> EvalSplit:
        """Truth = ``split``'s items; excluded = every earlier split's (train for valid, train+valid for test), or
        for test without ``mask_valid`` the train items only (MMRec: valid items stay candidates).

        With ``items`` (e.g. the cold items), each user's truth is restricted to those items and users without one
        are left out; the masking, and so the ranking over all items, stays the same."""
        frame = ds.interactions
        relevant = frame[frame["split"] == split]
        if items is not None:
            relevant = relevant[relevant["item_id"].isin(items)]
        truth = _user_items(relevant, ds)
        masked = frame["split"] < split if mask_valid else frame["split"] == TRAIN
        exclude = _user_items(frame[masked], ds)
        users = torch.nonzero(truth.counts(torch.arange(ds.num_users))).flatten()
        return cls(users=users, truth=truth, exclude=exclude)


def _user_items(frame: pd.DataFrame, ds: Dataset) -> UserItems:
    return UserItems.from_pairs(torch.tensor(frame["user_id"].to_numpy()),
                                torch.tensor(frame["item_id"].to_numpy()), ds.num_users, ds.num_items)


class BPRSampler:
    """Triples (u, i, j): every distinct train pair once per epoch, j uniform among u's non-train items: among
    all items (``negatives="all_items"``), or among the items that occur in the train split (``"train_items"``,
    MMRec's sampler, which never draws an item only valid or test interactions name). ``cold_items`` (the items
    ``dataset.cold_items`` held out) are never drawn in either mode, so training never sees a cold item.

    The epoch's order and negatives depend only on (seed, epoch), not on the rank: every rank draws the
    same global epoch and keeps its strided shard, as ``DistributedSampler`` does. Resuming at an epoch
    therefore replays exactly the batches an uninterrupted run would see.
    """

    def __init__(self, graph: TrainGraph, negatives: str = "all_items", cold_items: Tensor | None = None) -> None:
        if not len(graph.users):
            raise DataError("the train split is empty: nothing to train on; check the dataset's split")
        if negatives not in ("all_items", "train_items"):
            raise ConfigError(f"train.negatives must be all_items or train_items, got {negatives!r}")
        candidates = (torch.unique(graph.items) if negatives == "train_items"
                      else torch.arange(graph.num_items))
        if cold_items is not None and len(cold_items):
            candidates = candidates[~torch.isin(candidates, cold_items)]
        self.candidates = candidates  # (C,) sorted item ids negatives come from
        degree = torch.bincount(graph.users, minlength=graph.num_users)
        if bool((degree >= len(self.candidates)).any()):
            user = int(torch.nonzero(degree >= len(self.candidates))[0])
            raise DataError(f"user {user} interacted with all {len(self.candidates)} candidate negative items in "
                            f"train: no negative item to sample; drop such users when preparing the dataset")
        self.graph = graph
        self.keys = torch.sort(graph.users * graph.num_items + graph.items).values  # for searchsorted

    def __len__(self) -> int:
        return len(self.keys)

    def epoch(self, seed: int, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[BPRBatch]:
        """This rank's batches of ``epoch``; every rank gets the same number of batches of
        ``ceil(batch_size / world_size)`` triples, so DDP steps stay in lockstep."""
        generator = torch.Generator().manual_seed(int(np.random.SeedSequence([seed, epoch]).generate_state(1)[0]))
        order = torch.randperm(len(self), generator=generator)
        users, pos = self.graph.users[order], self.graph.items[order]
        neg = self._negatives(users, generator)
        pad = math.ceil(len(order) / world_size) * world_size - len(order)  # wrap so every rank gets as many
        users, pos, neg = (torch.cat([t, t[:pad]]) for t in (users, pos, neg))
        shard = slice(rank, None, world_size)
        per_rank = math.ceil(batch_size / world_size)
        return [BPRBatch(u, i, j) for u, i, j in zip(users[shard].split(per_rank), pos[shard].split(per_rank),
                                                     neg[shard].split(per_rank), strict=True)]

    def _negatives(self, users: Tensor, generator: torch.Generator) -> Tensor:
        """Rejection sampling among the candidates: redraw the negatives that hit a train item until none does."""
        num_items, candidates = self.graph.num_items, self.candidates
        neg = candidates[torch.randint(len(candidates), users.shape, generator=generator)]
        todo = torch.arange(len(users))
        while len(todo):
            keys = users[todo] * num_items + neg[todo]
            at = torch.searchsorted(self.keys, keys).clamp(max=len(self.keys) - 1)
            todo = todo[self.keys[at] == keys]
            neg[todo] = candidates[torch.randint(len(candidates), todo.shape, generator=generator)]
        return neg


@dataclass(frozen=True, eq=False)
class FitResult:
    """What a run produced; ``valid`` is the best evaluation, ``test`` that state's test metrics.

    ``history`` has one entry per evaluation: ``epoch``, ``loss``, ``epoch_seconds``, ``eval_seconds`` and
    ``valid/<metric>@K``. ``test_per_user`` has ``user_id`` plus one column per metric. ``best_state`` is the
    tested model's ``state_dict`` (on CPU), what ``rmm recommend`` loads. ``test_cold`` and
    ``test_cold_per_user`` are the same test metrics on the dataset's cold items only (``dataset.cold_items``;
    each user's truth is their cold test items, users without one left out); empty when there are none.
    """

    best_epoch: int
    valid: dict[str, float]
    test: dict[str, float]
    test_per_user: pd.DataFrame
    train_seconds: float
    history: list[dict[str, float]]
    best_state: dict[str, Tensor] | None = None
    resumed_after_epoch: int | None = None
    test_cold: dict[str, float] = field(default_factory=dict)
    test_cold_per_user: pd.DataFrame = field(default_factory=pd.DataFrame)


def rank_and_world() -> tuple[int, int]:
    """This process's rank and the world size; (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def evaluate_split(model: Recommender[Any], split: EvalSplit, ks: tuple[int, ...], *, rank: int = 0,
                   world_size: int = 1, device: torch.device | str = "cpu", batch_users: int = 1024) -> pd.DataFrame:
    """Per-user metrics of all of ``split``'s users; this rank scores chunks ``rank::world_size``.

    The users are cut into the same ``batch_users`` chunks whatever the world size, because a matrix
    product's last bits depend on its row count and could flip near-ties in the ranking. Each rank fills its
    rows of a zero table and the tables are summed (exact on disjoint rows), so every rank ends with
    bit-for-bit the table one worker computes.
    """
    names = metric_names(ks)
    positions = torch.arange(len(split.users)).split(batch_users)[rank::world_size]
    mine = torch.cat([torch.empty(0, dtype=torch.long), *positions])
    part = evaluate(model, split.users[mine], split.exclude, split.truth, ks, batch_users=batch_users)
    table = torch.zeros(len(split.users), len(names), dtype=torch.float64)
    table[mine] = torch.stack([part[n] for n in names], dim=1)
    if world_size > 1:
        table = table.to(device)
        dist.all_reduce(table)
        table = table.cpu()
    return pd.DataFrame({"user_id": split.users.numpy(), **{n: table[:, j].numpy() for j, n in enumerate(names)}})


def summarize(per_user: pd.DataFrame, what: str = "metrics") -> dict[str, float]:
    """Mean of every metric column over users.

    Raises:
        DivergedError: a mean is not finite (no users, or non-finite scores); ``what`` names the run and split.
    """
    means = {name: float(per_user[name].mean()) for name in per_user.columns if name != "user_id"}
    broken = {name: value for name, value in means.items() if not math.isfinite(value)}
    if broken:
        raise DivergedError(f"{what}: {', '.join(f'{k} = {v}' for k, v in broken.items())} over "
                            f"{len(per_user)} users; a metric that cannot be computed is never reported")
    return means


def _mean_across_ranks(value: float, world_size: int, device: torch.device | str) -> float:
    if world_size == 1:
        return value
    total = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(total)
    return float(total) / world_size


def fit(model_cfg: ModelConfig, train_cfg: TrainConfig, data: Dataset, features: Mapping[str, Tensor], *,
        report: ReportFn | None = None, prepare_model: Callable[[nn.Module], nn.Module] | None = None,
        resume_from: str | Path | None = None, device: torch.device | str = "cpu",
        knn_cache_dir: str | Path | None = None) -> FitResult:
    """Train ``model_cfg`` on ``data``'s train split, early-stopping on valid ``train_cfg.eval.metric``.

    Validation runs every ``eval_every`` epochs and after the last; training stops after ``patience``
    evaluations in a row without a strictly better metric, and the best evaluated state is tested.

    Args:
        model_cfg: model name, params, features and fusion.
        train_cfg: epochs, batch size (global, split across ranks), optimiser, evaluation and stopping.
        data: the prepared dataset (all splits; only train is trained on).
        features: modality name -> (num_items, dim) tensor, in ``model_cfg.features`` order.
        report: called after each evaluation on every rank (see :data:`ReportFn`).
        prepare_model: wraps the model for distributed training, e.g. ``ray.train.torch.prepare_model``
            (DDP); the identity when None.
        resume_from: a checkpoint directory written by a previous call; training continues after its epoch.
        device: where the model and batches live.
        knn_cache_dir: where the model's item-item kNN graphs are cached (:mod:`rmm.data.knn_cache`); None
            builds them in memory.

    Returns:
        The best validation metrics, the test metrics of that state (train + valid items masked, or train only
        without ``train.eval.test_masks_valid``), per-user test metrics, the same on the cold items (those
        ``dataset.json`` records; empty without any, or without a test user on one), the evaluation history and
        the training wall time.

    Raises:
        DivergedError: the epoch loss, or a metric, is NaN or infinite.
        DataError: a split to train, validate or test on is empty.
    """
    prepare_cpu_process()  # subnormals flushed, freed memory kept for the next step
    rank, world_size = rank_and_world()
    autocast_dtype = _autocast_dtype(train_cfg)
    ks = tuple(train_cfg.eval.topk)
    if train_cfg.eval.metric not in metric_names(ks):
        raise ConfigError(f"train.eval.metric {train_cfg.eval.metric!r} is not computed; choose one of "
                          f"{metric_names(ks)}")
    valid = EvalSplit.from_dataset(data, VALID)
    if not len(valid.users):
        raise DataError(f"dataset {data.root} has no valid interactions to early-stop on; re-prepare it with "
                        f"a split that keeps a valid part")
    torch.manual_seed(train_cfg.seed)
    graph = TrainGraph.from_dataset(data)
    item_graphs = _item_graphs(model_cfg, features, knn_cache_dir)
    user_graph = _user_graph(model_cfg, graph, knn_cache_dir)
    model = build_model(model_cfg, graph, features, item_graphs=item_graphs, user_graph=user_graph).to(device)
    # fused: Adam's update in one pass over each parameter (same algorithm): ~4x faster on the CPU than the
    # per-op default, which was a fifth of a VBPR step and most of a BPR-MF one. A training-free model (fitted
    # when built) has no parameters: no optimiser, no DDP, and its one evaluation is the result.
    optimizer = (torch.optim.Adam(model.parameters(), lr=train_cfg.learning_rate,
                                  weight_decay=train_cfg.weight_decay, fused=True) if model.trainable else None)
    state = _initial_state(model)
    resumed_after_epoch = None
    if resume_from is not None:
        state = torch.load(Path(resume_from) / STATE_FILE, weights_only=True)
        model.load_state_dict(state.pop("model"))
        if optimizer is not None:
            optimizer.load_state_dict(state.pop("optimizer"))
        resumed_after_epoch = state["epoch"]
        log.info("%s: resuming after epoch %d from %s", model_cfg.label, state["epoch"], resume_from)
    trained = prepare_model(model) if prepare_model is not None and optimizer is not None else model
    cold_items = cold_item_ids(data.info)
    sampler = BPRSampler(graph, train_cfg.negatives, cold_items=torch.from_numpy(cold_items))
    if resume_from is not None:  # last, so nothing above draws from the restored streams
        _restore_rng(state.pop("rng", None), model_cfg.label, rank=rank, world_size=world_size, device=device)
    key = f"valid/{train_cfg.eval.metric}"

    epochs = train_cfg.epochs if optimizer is not None else 1
    started = time.perf_counter() - state["train_seconds"]
    for epoch in range(state["epoch"] + 1, epochs + 1):
        if state["bad_evals"] >= train_cfg.eval.patience:
            break
        tic = time.perf_counter()
        model.start_epoch(train_cfg.seed, epoch)  # per-epoch state: FREEDOM's pruned graph, LATTICE's kNN
        loss = 0.0
        if optimizer is not None:
            for group in optimizer.param_groups:
                group["lr"] = epoch_learning_rate(train_cfg, epoch)
            loss = _mean_across_ranks(_train_epoch(trained, optimizer, sampler, train_cfg, epoch, rank,
                                                   world_size, device, autocast_dtype), world_size, device)
        if not math.isfinite(loss):
            raise DivergedError(f"{model_cfg.label}: loss is {loss} at epoch {epoch}; lower "
                                f"train.learning_rate, raise reg_weight, or check the features for NaN")
        epoch_seconds = time.perf_counter() - tic
        if epoch % train_cfg.eval.every and epoch != epochs:
            if rank == 0:
                log.info("%s epoch %d loss %.5f (%.2fs)", model_cfg.label, epoch, loss, epoch_seconds)
            continue
        tic = time.perf_counter()
        per_user = evaluate_split(model, valid, ks, rank=rank, world_size=world_size, device=device)
        metrics = {"epoch": epoch, "loss": loss, "epoch_seconds": epoch_seconds,
                   "eval_seconds": time.perf_counter() - tic,
                   **{f"valid/{k}": v for k, v in summarize(per_user, f"{model_cfg.label} valid").items()}}
        _record_evaluation(state, metrics, metrics[key], model)
        state["train_seconds"] = time.perf_counter() - started
        if rank == 0:
            log.info("%s epoch %d loss %.5f %s %.5f (best %.5f @ %d) (%.2fs train, %.2fs eval)", model_cfg.label,
                     epoch, loss, key, metrics[key], state["best_metric"], state["best_epoch"], epoch_seconds,
                     metrics["eval_seconds"])
        last = epoch == epochs or state["bad_evals"] >= train_cfg.eval.patience
        if last or epoch - state["checkpoint_epoch"] >= train_cfg.fault_tolerance.checkpoint_every:
            state["checkpoint_epoch"] = epoch
            state["rng"] = _rng_states(world_size, device)  # a collective: every rank takes part
            _report(report, metrics, (state, model, optimizer) if rank == 0 else None)
        else:
            _report(report, metrics, None)
    train_seconds = time.perf_counter() - started

    model.load_state_dict(state["best_model"])
    test = EvalSplit.from_dataset(data, TEST, mask_valid=train_cfg.eval.test_masks_valid)
    if not len(test.users):
        raise DataError(f"dataset {data.root} has no test interactions: no test metric can be computed; "
                        f"re-prepare it with a split that keeps a test part")
    per_user_test = evaluate_split(model, test, ks, rank=rank, world_size=world_size, device=device)
    test_cold, per_user_cold = _test_cold(model, data, cold_items, train_cfg, model_cfg.label, rank=rank,
                                          world_size=world_size, device=device)
    best = next(h for h in state["history"] if h["epoch"] == state["best_epoch"])
    return FitResult(best_epoch=state["best_epoch"],
                     valid={k.removeprefix("valid/"): v for k, v in best.items() if k.startswith("valid/")},
                     test=summarize(per_user_test, f"{model_cfg.label} test"), test_per_user=per_user_test,
                     train_seconds=train_seconds,
                     history=state["history"], best_state=state["best_model"],
                     resumed_after_epoch=resumed_after_epoch, test_cold=test_cold, test_cold_per_user=per_user_cold)


def _test_cold(model: Recommender[Any], data: Dataset, cold_items: np.ndarray, train_cfg: TrainConfig, label: str, *,
               rank: int, world_size: int, device: torch.device | str) -> tuple[dict[str, float], pd.DataFrame]:
    """Test metrics (means and per user) with each user's truth restricted to their cold test items, ranked and
    masked as the full test; empty when there is no cold item or no test user on one (never a NaN mean)."""
    if not len(cold_items):
        return {}, pd.DataFrame()
    split = EvalSplit.from_dataset(data, TEST, mask_valid=train_cfg.eval.test_masks_valid, items=cold_items)
    if not len(split.users):
        log.warning("%s: none of the %d cold items has a test interaction: no cold-item test metrics", label,
                    len(cold_items))
        return {}, pd.DataFrame()
    per_user = evaluate_split(model, split, tuple(train_cfg.eval.topk), rank=rank, world_size=world_size, device=device)
    return summarize(per_user, f"{label} cold-item test"), per_user


def epoch_learning_rate(train_cfg: TrainConfig, epoch: int) -> float:
    """Epoch ``epoch``'s (1-based) learning rate under ``train.lr_decay = [gamma, step]``:
    ``learning_rate * gamma ** ((epoch - 1) / step)``, MMRec's LambdaLR stepped after each epoch. A function of
    the epoch alone, so a resumed run continues the schedule without checkpointing a scheduler."""
    gamma, step = train_cfg.lr_decay
    return train_cfg.learning_rate * gamma ** ((epoch - 1) / step)


def _autocast_dtype(train_cfg: TrainConfig) -> torch.dtype | None:
    """The autocast dtype ``train_cfg.precision`` asks for (a config without the field trains in fp32)."""
    precision = train_cfg.precision
    if precision not in PRECISIONS:
        raise ConfigError(f"train.precision must be one of {list(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def _item_graphs(model_cfg: ModelConfig, features: Mapping[str, Tensor],
                 cache_dir: str | Path | None) -> dict[str, Tensor] | None:
    """The model's item-item kNN graphs, read from (or built into) ``cache_dir``; None when it reads none or
    there is no cache dir, and the model builds them in memory."""
    spec = get_model_class(model_cfg.name).item_graph_spec(model_params(model_cfg))
    if spec is None or cache_dir is None:
        return None
    return {name: cached_knn_graph(matrix, spec, cache_dir=cache_dir, name=name) for name, matrix in features.items()}


def _user_graph(model_cfg: ModelConfig, graph: TrainGraph, cache_dir: str | Path | None) -> Tensor | None:
    """The model's user-user co-occurrence graph, read from (or built into) ``cache_dir``; None when it reads
    none or there is no cache dir, and the model builds it in memory."""
    spec = get_model_class(model_cfg.name).user_graph_spec(model_params(model_cfg))
    if spec is None or cache_dir is None:
        return None
    return cached_user_graph(graph, spec, cache_dir=cache_dir)


def _initial_state(model: nn.Module) -> dict[str, Any]:
    """Loop bookkeeping; everything in it is checkpointed so a resumed run continues identically."""
    return {"epoch": 0, "best_epoch": 0, "best_metric": -math.inf, "bad_evals": 0, "checkpoint_epoch": 0,
            "train_seconds": 0.0, "history": [], "best_model": _cpu_copy(model.state_dict())}


def _rng_states(world_size: int, device: torch.device | str) -> list[dict[str, Tensor]]:
    """Every rank's torch random state (CPU, and the GPU's when training on one), gathered on all ranks.

    Dropout (BM3) and Gumbel noise (LGMRec) draw from torch's global generator, and a rank's draws depend on its
    own history (it evaluates other users than its peers), so a checkpoint holds each rank's state: a resumed
    rank continues its own stream exactly where the uninterrupted run was."""
    mine = {"cpu": torch.get_rng_state()}
    if torch.device(device).type == "cuda":
        mine["cuda"] = torch.cuda.get_rng_state(device)
    if world_size == 1:
        return [mine]
    states: list[Any] = [None] * world_size
    dist.all_gather_object(states, mine)
    return states


def _restore_rng(states: list[dict[str, Tensor]] | None, label: str, *, rank: int, world_size: int,
                 device: torch.device | str) -> None:
    """Continue this rank's random stream from a checkpoint's :func:`_rng_states`. A checkpoint written by
    another number of ranks (or by an rmm that did not save them) leaves the streams seeded: the run goes on,
    but random draws no longer replay the uninterrupted run's."""
    if states is None or len(states) != world_size:
        log.warning("%s: the checkpoint holds the random state of %s ranks, this run has %d: dropout and noise "
                    "draws will differ from an uninterrupted run", label, len(states) if states else "no", world_size)
        return
    torch.set_rng_state(states[rank]["cpu"])
    if "cuda" in states[rank] and torch.device(device).type == "cuda":
        torch.cuda.set_rng_state(states[rank]["cuda"], device)


def _cpu_copy(tensors: Mapping[str, Tensor]) -> dict[str, Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in tensors.items()}


def _train_epoch(model: nn.Module, optimizer: torch.optim.Optimizer, sampler: BPRSampler, cfg: TrainConfig,
                 epoch: int, rank: int, world_size: int, device: torch.device | str,
                 autocast_dtype: torch.dtype | None = None) -> float:
    """One pass over this rank's shard; returns the mean batch loss. With ``autocast_dtype`` the forward pass
    runs under autocast (bfloat16 needs no loss scaling: it has float32's exponent range)."""
    model.train()
    device_type = torch.device(device).type
    total, batches = 0.0, sampler.epoch(cfg.seed, epoch, cfg.batch_size, rank, world_size)
    for batch in batches:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device_type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(batch.to(device))
        loss.backward()
        optimizer.step()
        total += float(loss.detach())
    return total / len(batches)


def _record_evaluation(state: dict[str, Any], metrics: dict[str, float], value: float, model: nn.Module) -> None:
    """Append to the history; keep a copy of the model when ``value`` beats the best, else count a miss."""
    state["history"].append(metrics)
    state["epoch"] = metrics["epoch"]
    if value > state["best_metric"]:
        state.update(best_metric=value, best_epoch=metrics["epoch"], bad_evals=0,
                     best_model=_cpu_copy(model.state_dict()))
    else:
        state["bad_evals"] += 1


def _report(report: ReportFn | None, metrics: dict[str, float],
            checkpoint: tuple[dict[str, Any], nn.Module, torch.optim.Optimizer | None] | None) -> None:
    """Call ``report``, with a directory holding ``state.pt`` when ``checkpoint`` (state, model, optimizer; the
    optimizer None for a training-free model)."""
    if report is None:
        return
    if checkpoint is None:
        report(metrics, None)
        return
    state, model, optimizer = checkpoint
    with tempfile.TemporaryDirectory(prefix="rmm-ckpt-") as directory:
        optimizer_state = {} if optimizer is None else {"optimizer": optimizer.state_dict()}
        torch.save({**state, "model": _cpu_copy(model.state_dict()), **optimizer_state}, Path(directory) / STATE_FILE)
        (Path(directory) / CHECKPOINT_INFO_FILE).write_text(json.dumps({"epoch": state["epoch"]}))
        report(metrics, directory)
