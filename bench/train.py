"""Training cost on a Baby-sized dataset: rmm's sparse models (1 and 2 data-parallel workers) against
straightforward dense reference implementations, plus the kNN item-graph build at 100k and 1M items.

    .venv/bin/python bench/train.py                         # everything (~6 min on 2 CPU cores)
    .venv/bin/python bench/train.py --models lightgcn --steps 20 --skip-knn

Every case runs in a fresh subprocess, so its peak memory (``VmHWM``, see :func:`peak_rss_mib`) is its own; the
cases run one after the other on the same machine and the same data, within one invocation. Every process uses
``--threads`` torch threads (default 1: one core per worker; 2-thread OpenMP under a shared machine's load was
erratic).

Dataset: 19,445 users, 7,050 items, 160,792 interactions (MMRec's Baby sizes), per-user 8:1:1 random split, only
the train split (~128k pairs) is used. Items have a latent taste vector in 40 clusters; users pick items by a
softmax over taste affinity plus a popularity prior; the 4096-d image features (non-negative, CNN-like) and 384-d
text features (L2-normalised, sentence-encoder-like) are noisy random projections of the item latents.

What is timed, per case (after ``--warmup`` steps): the median optimiser step (forward = loss, backward, Adam) over
``--steps`` steps of BPR batches of 2,048 from the real sampler, and the per-epoch work outside the steps
(FREEDOM's edge pruning, LATTICE's learned-graph rebuild; for the reference LATTICE its first-batch dense graph
rebuild, each with its first step's extra cost), and the sampler's whole epoch (``sampler s``: drawing every
batch's negatives, rmm's ``BPRSampler`` or the references' MMRec-style loader). ``epoch s`` = per-epoch work +
sampler s + steps/epoch x median step time, an extrapolation from those steps (one real epoch is 64 steps).
Evaluation is not included. ``rmm / ref`` is the epoch ratio against the model's reference in the same run.

- ``rmm``, 1 worker: :func:`rmm.models.base.build_model` with kNN graphs from :mod:`rmm.data.knn_cache` (a disk
  cache under the bench's temp dir; ``setup s`` says whether it hit), the training loop's own sampler and step,
  with what ``rmm.train.loop.fit`` sets: subnormal floats flushed to zero and fused Adam. MMGCN and GRCN also get
  a ``protocol mmrec`` row: their strict defaults compute a different model from MMRec's (layers, routing).
- ``rmm``, 2 workers: two processes (``torch.multiprocessing``, gloo, 1 thread each, DDP with
  ``broadcast_buffers=False`` as in ``rmm.train.ray_trainer``), each rank with its half of every batch; the step
  time is the slower rank's. Models whose step is per-batch work speed up; full-graph models (LightGCN, LATTICE)
  do not, since every rank still propagates the whole graph each step. Peak memory is per worker process (each
  loads the dataset and features, as Ray Train workers do).
- ``dense ref``: the models as MMRec's reference code writes them, in one process: COO ``torch.sparse.mm`` with
  autograd's own backward for the user-item graph, content projections of the whole catalogue every step;
  LATTICE with dense I x I similarity, dense top-k scatter, dense normalisation and a dense I x I item graph
  (``torch.mm``), rebuilt at each epoch's first batch and detached after it; FREEDOM's dense I x I similarity for
  its kNN at set-up. The dense normalisation here is ``d[:, None] * A * d[None, :]``; MMRec's ``diagflat``
  matrix products cost O(I^3) more, so the reference shown is the faster of the two. MMGCN and GRCN as MMRec
  runs them, through PyG ``MessagePassing`` (MMGCN: 3 mean convolutions per modality, concatenation layers, the
  text branch at 384-d, ID embeddings and preferences with gradients but outside the optimiser; GRCN: 3 routing
  attention passes whose user output is dropped, one attention pass both ways, two weighted convolutions).
  BPR-MF: two embedding tables. As MMRec: plain ``torch.optim.Adam``, subnormals not flushed, the adjacency a COO
  tensor not marked coalesced, and batches from :class:`MMRecLoader` (pandas shuffle and slices, a Python
  rejection loop per negative).

kNN build (``KNNSpec(k=10, cosine, sym)``, what LATTICE reads): N x 384 float32 features in 200 clusters. A full
build is I^2 / 2 x 384 multiply-adds (1M items: 1.9e14, 75 min on 2 CPU cores), so by default only
``--knn-chunks`` row chunks spread evenly over the catalogue are computed; the others give their rows k placeholder
neighbours of the right size and dtype without computing similarities. Memory is therefore the true full-size
footprint (all of the feature matrix, the running top-k of every item, the block temporaries, assembly and
normalisation), and ``build s`` is extrapolated from the computed chunks' time per block (row chunk i has
(I - i) / tile blocks). The extrapolation errs high: the skipped chunks' items never raise the other items'
k-th best, so more columns stay in the column-wise top-k than in a full build. ``--knn-full`` computes every chunk;
``--knn-device cuda`` builds on a GPU (its peak memory is then shown too).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.config import ModelConfig, protocol_defaults
from rmm.data.graph import KNNSpec, TrainGraph
from rmm.models.base import BPRBatch, Recommender, build_model, model_params
from rmm.models.layers import bpr_loss, l2_reg
from rmm.models.registry import get_model_class, model_spec
from rmm.train.cpu import prepare_cpu_process
from rmm.train.loop import BPRSampler

BABY = {"num_users": 19_445, "num_items": 7_050, "num_interactions": 160_792}
MODELS = ("bprmf", "lightgcn", "vbpr", "mmgcn", "grcn", "lattice", "freedom", "bm3", "lgmrec")
#: Models whose default (``strict``) config computes different maths from MMRec's; they get a second rmm row
#: with ``protocol: mmrec``'s values, the same model as the reference.
PROTOCOL_ROWS = ("mmgcn", "grcn", "lattice", "freedom", "bm3")
FEATURES = ("image", "text")
BATCH_SIZE = 2048
SEED = 2024
EMBEDDING_DIM = 64


# ---------------------------------------------------------------------------------------------------- data


def make_baby(out: Path, seed: int = SEED, clusters: int = 40, latent_dim: int = 32) -> None:
    """Write ``train.npz`` (users, items of the distinct train pairs) and ``image.npy`` / ``text.npy``."""
    rng = np.random.default_rng(seed)
    num_users, num_items, total = BABY["num_users"], BABY["num_items"], BABY["num_interactions"]
    centroids = rng.standard_normal((clusters, latent_dim))
    item_cluster = rng.choice(clusters, num_items, p=rng.dirichlet(np.ones(clusters)))
    item_latent = centroids[item_cluster] + 0.6 * rng.standard_normal((num_items, latent_dim))
    user_latent = centroids[rng.integers(clusters, size=num_users)] + 0.8 * rng.standard_normal((num_users, latent_dim))
    log_popularity = -0.8 * np.log(rng.permutation(num_items) + 1.0)
    # 5-core-like counts summing to exactly ``total``: 5 each plus a skewed share of the rest.
    counts = 5 + rng.multinomial(total - 5 * num_users, rng.dirichlet(np.full(num_users, 0.5)))
    counts = np.minimum(counts, num_items // 2)
    generator = torch.Generator().manual_seed(seed)
    item_t, popularity_t = torch.from_numpy(item_latent).float(), torch.from_numpy(log_popularity).float()
    train_users, train_items = [], []
    for start in range(0, num_users, 1024):  # Gumbel top-k: a weighted draw without replacement, per user
        block = slice(start, min(start + 1024, num_users))
        logits = torch.from_numpy(user_latent[block]).float() @ item_t.T * (2.0 / math.sqrt(latent_dim))
        # -log(Exp(1)) is a standard Gumbel draw
        keys = logits.add_(popularity_t).sub_(torch.empty_like(logits).exponential_(generator=generator).log_())
        ranked = torch.topk(keys, int(counts[block].max()), dim=1).indices.numpy()  # (block, max count)
        for row, user in enumerate(range(block.start, block.stop)):
            picked = rng.permutation(ranked[row, :counts[user]])  # random order; the first 80% are train
            keep = max(1, int(round(0.8 * len(picked))))
            train_users.append(np.full(keep, user))
            train_items.append(picked[:keep])
    np.savez(out / "train.npz", users=np.concatenate(train_users), items=np.concatenate(train_items),
             interactions=int(counts.sum()))
    image = np.maximum(item_latent @ rng.standard_normal((latent_dim, 4096)) / math.sqrt(latent_dim)
                       + 0.5 * rng.standard_normal((num_items, 4096)), 0.0)
    np.save(out / "image.npy", image.astype(np.float32))
    text = item_latent @ rng.standard_normal((latent_dim, 384)) + 1.0 * rng.standard_normal((num_items, 384))
    text = (text / np.linalg.norm(text, axis=1, keepdims=True)).astype(np.float32)
    # As real sentence-encoder output: a few thousand entries of 1e-35..1e-30, whose products with small
    # gradients are subnormal floats (slow on x86 unless flushed to zero).
    tiny = rng.choice(text.size, 3_000, replace=False)
    text.flat[tiny] = np.sign(text.flat[tiny]) * 10.0 ** rng.uniform(-35, -30, len(tiny))
    np.save(out / "text.npy", text)


def load_baby(data_dir: Path) -> tuple[TrainGraph, dict[str, Tensor]]:
    train = np.load(data_dir / "train.npz")
    graph = TrainGraph(BABY["num_users"], BABY["num_items"], users=torch.from_numpy(train["users"]).long(),
                       items=torch.from_numpy(train["items"]).long())
    features = {name: torch.from_numpy(np.load(data_dir / f"{name}.npy")) for name in FEATURES}
    return graph, features


# ------------------------------------------------------------------------------ dense (MMRec-style) references


def coo(adj: Tensor) -> Tensor:
    """MMRec's sparse adjacency: ``torch.sparse.FloatTensor(indices, values, shape)`` of a scipy COO matrix, so
    not marked coalesced (measured: ``torch.sparse.mm`` costs the same either way on this graph)."""
    adj = adj.to_sparse_coo().coalesce()
    return torch.sparse_coo_tensor(adj.indices(), adj.values(), adj.shape)


def dense_sim(x: Tensor) -> Tensor:
    """MMRec ``build_sim``: dense I x I cosine."""
    unit = x / x.norm(dim=-1, keepdim=True)
    return unit @ unit.T


def dense_knn(sim: Tensor, k: int) -> Tensor:
    """MMRec ``build_knn_neighbourhood``: top-k kept, scattered into a dense I x I zero matrix."""
    values, index = torch.topk(sim, k, dim=-1)
    return torch.zeros_like(sim).scatter_(-1, index, values)


def dense_sym_norm(adj: Tensor) -> Tensor:
    """Dense :math:`D^{-1/2} A D^{-1/2}` (MMRec: ``diagflat`` and two I x I x I products; broadcasting here)."""
    inv_sqrt = adj.sum(-1).pow(-0.5)
    inv_sqrt[torch.isinf(inv_sqrt)] = 0.0
    return inv_sqrt[:, None] * adj * inv_sqrt[None, :]


class RefGraphModel(nn.Module):
    """The user-item part MMRec's graph models share: a COO normalised adjacency and LightGCN layers through
    ``torch.sparse.mm`` and autograd's own sparse backward."""

    def __init__(self, graph: TrainGraph, layers: int) -> None:
        super().__init__()
        self.num_users, self.num_items, self.layers = graph.num_users, graph.num_items, layers
        self.adj = coo(graph.norm_adj())

    def propagate(self, adj: Tensor, ego: Tensor, layers: int) -> tuple[Tensor, Tensor]:
        out = [ego]
        for _ in range(layers):
            out.append(torch.sparse.mm(adj, out[-1]))
        return torch.split(torch.stack(out, 1).mean(1), [self.num_users, self.num_items])

    def start_epoch(self, epoch: int) -> None:
        """Per-epoch work (none by default)."""


class RefLightGCN(RefGraphModel):
    """MMRec ``LightGCN``: 3 layers, L2 on the batch's ego embeddings."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], layers: int = 3) -> None:
        super().__init__(graph, layers)
        self.embedding = nn.Embedding(graph.num_users + graph.num_items, EMBEDDING_DIM)
        nn.init.xavier_uniform_(self.embedding.weight)

    def forward(self, batch: BPRBatch) -> Tensor:
        users, items = self.propagate(self.adj, self.embedding.weight, self.layers)
        u, i, j = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        ego = self.embedding.weight
        return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + 1e-4 * l2_reg(
            ego[batch.users], ego[self.num_users + batch.pos_items], ego[self.num_users + batch.neg_items])


class RefVBPR(nn.Module):
    """MMRec ``VBPR``: the linear map of the concatenated raw features, for every item, every step."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor]) -> None:
        super().__init__()
        self.raw = torch.cat([features["text"], features["image"]], -1)
        self.user = nn.Embedding(graph.num_users, 2 * EMBEDDING_DIM)
        self.item = nn.Embedding(graph.num_items, EMBEDDING_DIM)
        self.linear = nn.Linear(self.raw.shape[1], EMBEDDING_DIM)
        nn.init.xavier_uniform_(self.user.weight)
        nn.init.xavier_uniform_(self.item.weight)

    def forward(self, batch: BPRBatch) -> Tensor:
        items = torch.cat([self.item.weight, self.linear(self.raw)], -1)  # (I, 2d)
        u, i, j = self.user.weight[batch.users], items[batch.pos_items], items[batch.neg_items]
        return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + 1e-4 * l2_reg(u, i, j)

    def start_epoch(self, epoch: int) -> None:
        """No per-epoch work."""


def trainable_features(features: dict[str, Tensor]) -> nn.ParameterDict:
    """MMRec's feature tables of LATTICE, FREEDOM and BM3, ``nn.Embedding.from_pretrained(x, freeze=False)``:
    parameters, so each step's projection of the catalogue also computes their (I, F) gradient and Adam updates
    them."""
    return nn.ParameterDict({m: nn.Parameter(x.clone()) for m, x in features.items()})


class RefLATTICE(RefGraphModel):
    """MMRec ``LATTICE`` (LightGCN backbone): the row-normalised user-item graph with self-loops, dense I x I
    graphs throughout; the catalogue projected every step; the learned graph rebuilt from the projections at each
    epoch's first batch (with a gradient into the trained feature tables) and detached for the others
    (``build_item_graph``)."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], k: int = 10, lambda_coeff: float = 0.9):
        super().__init__(graph, layers=2)
        self.adj = coo(graph.adjacency("row_self_loops"))
        self.k, self.lambda_coeff = k, lambda_coeff
        self.raw = trainable_features(features)
        self.original = {m: dense_sym_norm(dense_knn(dense_sim(x), k)) for m, x in features.items()}
        self.user_embedding = nn.Embedding(graph.num_users, EMBEDDING_DIM)
        self.item_embedding = nn.Embedding(graph.num_items, EMBEDDING_DIM)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.trs = nn.ModuleDict({m: nn.Linear(x.shape[1], EMBEDDING_DIM) for m, x in features.items()})
        self.modal_weight = nn.Parameter(torch.tensor([0.5, 0.5]))
        self.item_adj: Tensor | None = None
        self.build_item_graph = True

    def forward(self, batch: BPRBatch) -> Tensor:
        projected = {m: self.trs[m](x) for m, x in self.raw.items()}  # MMRec projects every step
        if self.build_item_graph:
            weight = torch.softmax(self.modal_weight, 0)
            learned = sum(w * dense_knn(dense_sim(projected[m]), self.k) for w, m in zip(weight, FEATURES, strict=True))
            original = sum(w * self.original[m] for w, m in zip(weight, FEATURES, strict=True))
            self.item_adj = (1 - self.lambda_coeff) * dense_sym_norm(learned) + self.lambda_coeff * original
            self.build_item_graph = False
        else:
            self.item_adj = self.item_adj.detach()
        h = self.item_adj @ self.item_embedding.weight  # (I, I) @ (I, d)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = self.propagate(self.adj, ego, self.layers)
        items = items + F.normalize(h, dim=1)
        u, i, j = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + 1e-4 * l2_reg(u, i, j)

    def start_epoch(self, epoch: int) -> None:
        self.build_item_graph = True


class RefFREEDOM(RefGraphModel):
    """MMRec ``FREEDOM``: kNN from a dense I x I similarity at set-up (then sparse COO, the two modalities' graphs
    summed uncoalesced), degree-sensitive pruning each epoch into a COO graph in draw order, projections of every
    item of the trained feature tables every step."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], k: int = 10, dropout: float = 0.8):
        super().__init__(graph, layers=2)
        self.raw, self.dropout = trainable_features(features), dropout
        adjs = []
        for x in features.values():
            _, index = torch.topk(dense_sim(x), k, dim=-1)  # dense I x I, then freed
            rows = torch.arange(graph.num_items).unsqueeze(1).expand(-1, k).flatten()
            indices = torch.stack([rows, index.flatten()])
            degree = torch.bincount(indices[0], minlength=graph.num_items).float() + 1e-7
            adjs.append(torch.sparse_coo_tensor(indices, degree[indices[0]].rsqrt() * degree[indices[1]].rsqrt(),
                                                (graph.num_items,) * 2, check_invariants=False))
        self.mm_adj = 0.5 * adjs[0] + 0.5 * adjs[1]
        self.edges = torch.stack([graph.users, graph.items])
        degree = graph.degrees()
        self.edge_values = (degree[graph.users] * degree[graph.num_users + graph.items]).rsqrt()
        self.user_embedding = nn.Embedding(graph.num_users, EMBEDDING_DIM)
        self.item_embedding = nn.Embedding(graph.num_items, EMBEDDING_DIM)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.trs = nn.ModuleDict({m: nn.Linear(x.shape[1], EMBEDDING_DIM) for m, x in features.items()})
        self.masked_adj: Tensor | None = None

    def start_epoch(self, epoch: int) -> None:
        keep = torch.multinomial(self.edge_values, int(len(self.edge_values) * (1 - self.dropout)))
        users, items = self.edges[:, keep]
        inv_sqrt = [(torch.bincount(ids, minlength=n).float() + 1e-7).rsqrt()
                    for ids, n in ((users, self.num_users), (items, self.num_items))]
        values = inv_sqrt[0][users] * inv_sqrt[1][items]
        items = items + self.num_users
        index = torch.cat([torch.stack([users, items]), torch.stack([items, users])], 1)
        size = (self.num_users + self.num_items,) * 2
        self.masked_adj = torch.sparse_coo_tensor(index, torch.cat([values, values]), size, check_invariants=False)

    def forward(self, batch: BPRBatch) -> Tensor:
        h = torch.sparse.mm(self.mm_adj, self.item_embedding.weight)
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = self.propagate(self.masked_adj, ego, self.layers)
        items = items + h
        u, i, j = users[batch.users], items[batch.pos_items], items[batch.neg_items]
        loss = bpr_loss((u * i).sum(-1), (u * j).sum(-1))
        for m, x in self.raw.items():
            content = self.trs[m](x)  # every item, every step
            loss = loss + 1e-4 * bpr_loss((u * content[batch.pos_items]).sum(-1),
                                          (u * content[batch.neg_items]).sum(-1))
        return loss


class RefBM3(RefGraphModel):
    """MMRec ``BM3``: COO propagation (1 layer), projections of every item of the trained feature tables every
    step, dropout target views and the predictor of the whole tables, cosine bootstrapping."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], dropout: float = 0.5):
        super().__init__(graph, layers=1)
        self.raw, self.dropout = trainable_features(features), dropout
        self.user_embedding = nn.Embedding(graph.num_users, EMBEDDING_DIM)
        self.item_embedding = nn.Embedding(graph.num_items, EMBEDDING_DIM)
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)
        self.predictor = nn.Linear(EMBEDDING_DIM, EMBEDDING_DIM)
        self.trs = nn.ModuleDict({m: nn.Linear(x.shape[1], EMBEDDING_DIM) for m, x in features.items()})

    def forward(self, batch: BPRBatch) -> Tensor:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = self.propagate(self.adj, ego, self.layers)
        items = items + self.item_embedding.weight
        content = {m: self.trs[m](x) for m, x in self.raw.items()}
        with torch.no_grad():
            u_target, i_target = F.dropout(users, self.dropout), F.dropout(items, self.dropout)
            c_target = {m: F.dropout(c, self.dropout) for m, c in content.items()}
        u_online, i_online = self.predictor(users), self.predictor(items)
        u, i = batch.users, batch.pos_items

        def cos_loss(a: Tensor, b: Tensor) -> Tensor:
            return 1 - F.cosine_similarity(a, b.detach(), dim=-1).mean()

        loss = cos_loss(u_online[u], i_target[i]) + cos_loss(i_online[i], u_target[u])
        for m, c in content.items():
            online = self.predictor(c)[i]
            loss = loss + 2.0 * (cos_loss(online, i_target[i]) + cos_loss(online, c_target[m][i]))
        return loss + 0.1 * l2_reg(items, users, norm="frobenius")  # MMRec's EmbLoss: / I


class RefLGMRec(RefGraphModel):
    """MMRec ``LGMRec``: per step and per modality the catalogue's projection and hyperedge logits (two products of
    the frozen features), COO products by the user-item matrix (as MMRec's, from a scipy COO in interaction order)
    and the normalised graph, Gumbel-softmax memberships with dropout, one hypergraph layer, and the contrastive
    loss against every user's and every item's hypergraph embedding (``exp`` of the (B, U) and (B, I) cosines)."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], hyperedges: int = 4, tau: float = 0.2,
                 keep_rate: float = 0.5, alpha: float = 0.3):
        super().__init__(graph, layers=2)
        self.raw, self.tau, self.keep_rate, self.alpha = features, tau, keep_rate, alpha
        self.interactions = torch.sparse_coo_tensor(torch.stack([graph.users, graph.items]),
                                                    torch.ones(len(graph.users)), (graph.num_users, graph.num_items))
        self.inv_degree = 1.0 / (graph.degrees()[:graph.num_users, None] + 1e-7)
        self.user_embedding = nn.Embedding(graph.num_users, EMBEDDING_DIM)
        self.item_embedding = nn.Embedding(graph.num_items, EMBEDDING_DIM)
        self.trs = nn.ParameterDict({m: nn.Parameter(torch.empty(x.shape[1], EMBEDDING_DIM)) for m, x in
                                     features.items()})
        self.hyper = nn.ParameterDict({m: nn.Parameter(torch.empty(x.shape[1], hyperedges)) for m, x in
                                       features.items()})
        for weight in (self.user_embedding.weight, self.item_embedding.weight, *self.trs.values(),
                       *self.hyper.values()):
            nn.init.xavier_uniform_(weight)

    def modality(self, m: str, item_cge: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Modality ``m``'s local graph embedding (U+I, d) and hypergraph user and item embeddings."""
        x = self.raw[m]
        item_logits = x @ self.hyper[m]  # (I, H)
        user_logits = torch.sparse.mm(self.interactions, item_logits)
        item_h = F.dropout(F.gumbel_softmax(item_logits, self.tau, dim=1), 1 - self.keep_rate)
        user_h = F.dropout(F.gumbel_softmax(user_logits, self.tau, dim=1), 1 - self.keep_rate)
        item_feats = x @ self.trs[m]  # (I, d)
        local = torch.cat([torch.sparse.mm(self.interactions, item_feats) * self.inv_degree, item_feats])
        for _ in range(2):
            local = torch.sparse.mm(self.adj, local)
        latent = item_h.T @ item_cge  # (H, d)
        return local, user_h @ latent, item_h @ latent

    def forward(self, batch: BPRBatch) -> Tensor:
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        users, items = self.propagate(self.adj, ego, self.layers)
        (v_local, v_users, v_items), (t_local, t_users, t_items) = (self.modality(m, items) for m in FEATURES)
        hyper = torch.cat([v_users, v_items]) + torch.cat([t_users, t_items])
        local = torch.cat([users, items]) + F.normalize(v_local) + F.normalize(t_local)
        final = local + self.alpha * F.normalize(hyper)
        users, items = torch.split(final, [self.num_users, self.num_items])
        u, i, j = users[batch.users], items[batch.pos_items], items[batch.neg_items]

        def contrast(anchor: Tensor, positive: Tensor, candidates: Tensor) -> Tensor:
            anchor, positive, candidates = F.normalize(anchor), F.normalize(positive), F.normalize(candidates)
            total = torch.exp(anchor @ candidates.T / self.tau).sum(1)  # (B, N)
            return -torch.log(torch.exp((anchor * positive).sum(1) / self.tau) / total).sum()

        cl = contrast(v_users[batch.users], t_users[batch.users], t_users) + contrast(
            v_items[batch.pos_items], t_items[batch.pos_items], t_items)
        return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + 1e-4 * cl + 1e-6 * l2_reg(u, i, j, norm="frobenius")


class RefBPRMF(nn.Module):
    """MMRec ``BPR``: two embedding tables, BPR plus ``EmbLoss`` of the batch's rows."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor]) -> None:
        super().__init__()
        self.user = nn.Embedding(graph.num_users, EMBEDDING_DIM)
        self.item = nn.Embedding(graph.num_items, EMBEDDING_DIM)
        nn.init.xavier_normal_(self.user.weight)
        nn.init.xavier_normal_(self.item.weight)

    def forward(self, batch: BPRBatch) -> Tensor:
        u, i, j = self.user(batch.users), self.item(batch.pos_items), self.item(batch.neg_items)
        return bpr_loss((u * i).sum(-1), (u * j).sum(-1)) + 1e-4 * l2_reg(u, i, j, norm="frobenius")

    def start_epoch(self, epoch: int) -> None:
        """No per-epoch work."""


def pyg_convs() -> tuple[type, type, type]:
    """MessagePassing layers as MMRec's MMGCN and GRCN run them (PyG imported only when these references are
    built): a mean convolution of ``x @ W``, a dot-product attention convolution (softmax over each target's
    incoming edges, the weights kept in ``alpha``) and an edge-weighted sum."""
    from torch_geometric.nn.conv import MessagePassing
    from torch_geometric.utils import remove_self_loops, softmax

    class MeanConv(MessagePassing):
        def __init__(self, width: int) -> None:
            super().__init__(aggr="mean")
            self.weight = nn.Parameter(torch.empty(width, width))
            nn.init.xavier_normal_(self.weight)

        def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
            x = x @ self.weight
            return self.propagate(edge_index, size=(len(x), len(x)), x=x)

    class AttentionConv(MessagePassing):
        def __init__(self) -> None:
            super().__init__(aggr="add")
            self.alpha: Tensor | None = None

        def forward(self, x: Tensor, edge_index: Tensor) -> Tensor:
            edge_index, _ = remove_self_loops(edge_index)
            return self.propagate(edge_index, x=x)

        def message(self, x_i: Tensor, x_j: Tensor, index: Tensor, size_i: int | None) -> Tensor:
            self.alpha = softmax((x_i * x_j).sum(-1), index, num_nodes=size_i)
            return x_j * self.alpha.unsqueeze(1)

    class WeightedConv(MessagePassing):
        def __init__(self) -> None:
            super().__init__(aggr="add")

        def forward(self, x: Tensor, edge_index: Tensor, weight: Tensor) -> Tensor:
            return self.propagate(edge_index, x=x, weight=weight)

        def message(self, x_j: Tensor, weight: Tensor) -> Tensor:
            return x_j * weight

    return MeanConv, AttentionConv, WeightedConv


def frozen_table(rows: int, cols: int) -> Tensor:
    """MMRec's MMGCN ID embeddings and preferences: Xavier-normal tensors that require a gradient (so autograd
    computes and accumulates it every step) but are not parameters, so Adam never updates them."""
    return nn.init.xavier_normal_(torch.rand(rows, cols, requires_grad=True))


def mmrec_pair_loss(out: Tensor, batch: BPRBatch, num_users: int) -> tuple[Tensor, Tensor, Tensor]:
    """MMRec's MMGCN/GRCN BPR term on the (U+I, D) representation, with the interleaved user and item index
    tensors its regularisers reuse."""
    user_index = batch.users.repeat_interleave(2)
    item_index = torch.stack([batch.pos_items, batch.neg_items]).t().reshape(-1) + num_users
    score = (out[user_index] * out[item_index]).sum(1).view(-1, 2)
    return -torch.log(torch.sigmoid(score @ torch.tensor([[1.0], [-1.0]]))).mean(), user_index, item_index


class RefMMGCN(nn.Module):
    """MMRec ``MMGCN``: per modality 3 PyG mean convolutions over the U+I graph, concatenation layers, the image
    features projected to 256 every step, the text branch at its raw 384-d width; ID embeddings and preferences
    outside the optimiser but with gradients."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], layers: int = 3) -> None:
        super().__init__()
        self.num_users = graph.num_users
        MeanConv, _, _ = pyg_convs()
        edges = torch.stack([graph.users, graph.items + graph.num_users])
        self.edge_index = torch.cat([edges, edges.flip(0)], 1)
        self.raw = {"image": features["image"], "text": features["text"]}  # MMRec: v_gcn first, then t_gcn
        self.id_embedding = frozen_table(graph.num_users + graph.num_items, EMBEDDING_DIM)
        self.preference: dict[str, Tensor] = {}
        self.mlp, self.conv, self.linear, self.g = nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict(), nn.ModuleDict()
        for m, x in self.raw.items():
            width = 256 if m == "image" else x.shape[1]
            self.preference[m] = frozen_table(graph.num_users, width)
            if m == "image":
                self.mlp[m] = nn.Linear(x.shape[1], width)
            widths = [width] + [EMBEDDING_DIM] * (layers - 1)
            self.conv[m] = nn.ModuleList(MeanConv(w) for w in widths)
            self.linear[m] = nn.ModuleList(nn.Linear(w, EMBEDDING_DIM) for w in widths)
            self.g[m] = nn.ModuleList(nn.Linear(w + EMBEDDING_DIM, EMBEDDING_DIM) for w in widths)

    def branch(self, m: str) -> Tensor:
        projected = self.mlp[m](self.raw[m]) if m in self.mlp else self.raw[m]
        x = F.normalize(torch.cat([self.preference[m], projected]))
        for conv, linear, g in zip(self.conv[m], self.linear[m], self.g[m], strict=True):
            h = F.leaky_relu(conv(x, self.edge_index))
            x_hat = F.leaky_relu(linear(x)) + self.id_embedding
            x = F.leaky_relu(g(torch.cat([h, x_hat], 1)))
        return x

    def forward(self, batch: BPRBatch) -> Tensor:
        out = sum(self.branch(m) for m in self.raw) / len(self.raw)
        loss, user_index, item_index = mmrec_pair_loss(out, batch, self.num_users)
        reg = (self.id_embedding[user_index] ** 2 + self.id_embedding[item_index] ** 2).mean()
        return loss + 1e-4 * (reg + (self.preference["image"] ** 2).mean())

    def start_epoch(self, epoch: int) -> None:
        """No per-epoch work."""


class RefGRCN(nn.Module):
    """MMRec ``GRCN``: per modality the projection of every item, 3 routing passes of PyG attention over the
    user -> item edges (their output is dropped for the users, as MMRec's), one attention pass over both
    directions; then confidence-weighted, pruned edge weights and 2 PyG weighted convolutions of the ID
    embeddings."""

    def __init__(self, graph: TrainGraph, features: dict[str, Tensor], routing: int = 3) -> None:
        super().__init__()
        self.num_users, self.routing = graph.num_users, routing
        _, AttentionConv, WeightedConv = pyg_convs()
        self.edge_index = torch.stack([graph.users, graph.items + graph.num_users])  # user -> item only
        self.raw = {"image": features["image"], "text": features["text"]}
        num_nodes = graph.num_users + graph.num_items
        self.id_embedding = nn.Parameter(nn.init.xavier_normal_(torch.rand(num_nodes, EMBEDDING_DIM)))
        self.confidence = nn.Parameter(nn.init.xavier_normal_(torch.rand(num_nodes, len(self.raw))))
        self.preference = nn.ParameterDict({m: nn.Parameter(nn.init.xavier_normal_(
            torch.rand(graph.num_users, EMBEDDING_DIM))) for m in self.raw})
        self.mlp = nn.ModuleDict({m: nn.Linear(x.shape[1], EMBEDDING_DIM) for m, x in self.raw.items()})
        for layer in self.mlp.values():
            nn.init.xavier_normal_(layer.weight)
        self.attention = nn.ModuleDict({m: AttentionConv() for m in self.raw})
        self.weighted = WeightedConv()

    def content(self, m: str) -> tuple[Tensor, Tensor]:
        features = F.normalize(F.leaky_relu(self.mlp[m](self.raw[m])))
        preference = F.normalize(self.preference[m])
        for _ in range(self.routing):
            routed = self.attention[m](torch.cat([preference, features]), self.edge_index)
            preference = F.normalize(preference + routed[:self.num_users])
        x = torch.cat([preference, features])
        out = x + self.attention[m](x, torch.cat([self.edge_index, self.edge_index.flip(0)], 1))
        return out, self.attention[m].alpha.view(-1, 1)

    def forward(self, batch: BPRBatch) -> Tensor:
        reps, alphas = zip(*(self.content(m) for m in self.raw), strict=True)
        edges = self.edge_index
        confidence = torch.cat([self.confidence[edges[0]], self.confidence[edges[1]]])  # (2E, M)
        weight = torch.relu((torch.cat(alphas, 1) * confidence).max(1).values.view(-1, 1))
        both = torch.cat([edges, edges.flip(0)], 1)
        x = F.normalize(self.id_embedding)
        hop1 = self.weighted(x, both, weight)
        out = torch.cat([x + hop1 + self.weighted(hop1, both, weight), *reps], 1)
        loss, user_index, item_index = mmrec_pair_loss(out, batch, self.num_users)
        reg = (self.id_embedding[user_index] ** 2 + self.id_embedding[item_index] ** 2).mean()
        reg = reg + (self.preference["image"] ** 2).mean()
        content_reg = sum((p[user_index] ** 2).mean() for p in self.preference.values())
        return loss + 1e-4 * (reg + content_reg)

    def start_epoch(self, epoch: int) -> None:
        """No per-epoch work."""


REFERENCES = {"bprmf": RefBPRMF, "lightgcn": RefLightGCN, "vbpr": RefVBPR, "mmgcn": RefMMGCN, "grcn": RefGRCN,
              "lattice": RefLATTICE, "freedom": RefFREEDOM, "bm3": RefBM3, "lgmrec": RefLGMRec}


# ------------------------------------------------------------------------------------------ training cases


class MMRecLoader:
    """The references' batches, drawn as MMRec's ``TrainDataLoader`` and trainer do: each epoch shuffles a pandas
    frame of the train pairs (``DataFrame.sample``), each batch slices it with ``iloc``, draws every negative in
    a Python loop (one ``random.sample`` of the train items' list per draw, redrawn while it is in the user's
    history set) and stacks a (3, B) tensor, which the trainer clones."""

    def __init__(self, graph: TrainGraph, seed: int) -> None:
        import pandas as pd

        self.frame = pd.DataFrame({"user": graph.users.numpy(), "item": graph.items.numpy()})
        self.history = {user: set(items.values) for user, items in self.frame.groupby("user")["item"]}
        self.items = sorted(self.frame["item"].unique().tolist())
        self.rng = random.Random(seed)

    def epoch(self, seed: int, epoch: int, batch_size: int, rank: int = 0, world_size: int = 1) -> list[BPRBatch]:
        """One epoch's batches (one process only: ``rank``/``world_size`` are accepted for the harness)."""
        frame = self.frame.sample(frac=1, random_state=seed + epoch).reset_index(drop=True)
        return [self.batch(frame.iloc[start:start + batch_size]) for start in range(0, len(frame), batch_size)]

    def batch(self, rows: Any) -> BPRBatch:
        negatives = []
        for user in rows["user"]:
            item = self.rng.sample(self.items, 1)[0]
            while item in self.history[user]:
                item = self.rng.sample(self.items, 1)[0]
            negatives.append(item)
        users, items = torch.tensor(rows["user"].values).long(), torch.tensor(rows["item"].values).long()
        triples = torch.cat([users[None], items[None], torch.tensor(negatives).long()[None]]).clone()
        return BPRBatch(*triples)


def peak_rss_mib() -> float:
    """This process's peak resident memory: ``VmHWM``, the high-water mark of its own address space.

    ``ru_maxrss`` would do, except that Linux carries it across ``fork`` + ``exec`` (the signal struct keeps the
    pre-exec maximum), so a case started from a big driver would report at least the driver's size.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def build(case: dict[str, Any], graph: TrainGraph, features: dict[str, Tensor]) -> tuple[nn.Module, dict]:
    """The case's model and what its set-up did."""
    name = case["model"]
    if case["impl"] == "dense ref":
        return REFERENCES[name](graph, features if name != "lightgcn" else {}), {}
    from rmm.data.knn_cache import cached_knn_graph

    params = model_spec(name).config_class(**case.get("params", {}))
    model_cfg = ModelConfig(name, features=FEATURES if model_spec(name).uses_features else (), params=params)
    feats = {m: features[m] for m in model_cfg.features}
    spec = get_model_class(name).item_graph_spec(model_params(model_cfg))
    info: dict[str, Any] = {}
    item_graphs = None
    if spec is not None:
        cache = Path(case["cache_dir"])
        before = set(cache.glob("knn-*.pt")) if cache.exists() else set()
        item_graphs = {m: cached_knn_graph(x, spec, cache_dir=cache) for m, x in feats.items()}
        info["knn_cache"] = "hit" if set(cache.glob("knn-*.pt")) == before else "miss"
    return build_model(model_cfg, graph, feats, item_graphs=item_graphs), info


def start_epoch(model: nn.Module, epoch: int) -> None:
    """The model's per-epoch work: ``start_epoch(seed, epoch)`` of an rmm model, ``start_epoch(epoch)`` of a
    reference."""
    inner = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    if not isinstance(inner, Recommender):
        inner.start_epoch(epoch)
    else:
        inner.start_epoch(SEED, epoch)


def time_steps(case: dict[str, Any], rank: int = 0, world_size: int = 1) -> dict[str, Any]:
    """Build the case's model and time its optimiser steps on this rank's batches of epoch 1."""
    torch.set_num_threads(case["threads"])
    if case["impl"] == "rmm":  # as rmm.train.loop.fit; MMRec does neither, so the references keep subnormals
        prepare_cpu_process()  # and glibc's default allocator
    tic = time.perf_counter()
    graph, features = load_baby(Path(case["data_dir"]))
    load_s = time.perf_counter() - tic
    torch.manual_seed(SEED)
    tic = time.perf_counter()
    model, info = build(case, graph, features)
    sampler = BPRSampler(graph) if case["impl"] == "rmm" else MMRecLoader(graph, SEED)
    setup_s = time.perf_counter() - tic
    trained = model
    if world_size > 1:
        import warnings

        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "`broadcast_buffers` is deprecated", FutureWarning)
            trained = nn.parallel.DistributedDataParallel(
                model, broadcast_buffers=False, find_unused_parameters=model.has_unused_parameters)
    # rmm.train.loop.fit's fused Adam for rmm; MMRec's plain torch.optim.Adam for the references
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=case["impl"] == "rmm")
    tic = time.perf_counter()
    batches = sampler.epoch(SEED, 1, BATCH_SIZE, rank, world_size)
    sampler_s = time.perf_counter() - tic

    def barrier() -> None:
        if world_size > 1:
            torch.distributed.barrier()

    def step(batch: BPRBatch) -> float:
        optimizer.zero_grad(set_to_none=True)
        loss = trained(batch)
        loss.backward()
        optimizer.step()
        return float(loss.detach())

    barrier()
    tic = time.perf_counter()
    start_epoch(trained, 1)
    epoch_work_s = time.perf_counter() - tic
    times, losses = [], []
    for batch in batches[:case["warmup"] + case["steps"]]:
        barrier()
        tic = time.perf_counter()
        losses.append(step(batch))
        barrier()
        times.append(time.perf_counter() - tic)
    if case["model"] == "lattice":  # the first batch rebuilds the learned graph with a gradient (both)
        epoch_work_s += max(0.0, times[0] - float(np.median(times[case["warmup"]:])))
    step_s = float(np.median(times[case["warmup"]:]))
    return {**info, "load_s": load_s, "setup_s": setup_s, "epoch_work_s": epoch_work_s, "step_s": step_s,
            "sampler_s": sampler_s, "steps_per_epoch": len(batches),
            "epoch_s": epoch_work_s + sampler_s + len(batches) * step_s,
            "loss_finite": all(math.isfinite(v) for v in losses), "peak_rss_mib": peak_rss_mib()}


def _ddp_worker(rank: int, case: dict[str, Any], port: int, results: Any) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                                         world_size=case["workers"])
    try:
        results.put((rank, time_steps(case, rank, case["workers"])))
    finally:
        torch.distributed.destroy_process_group()


def run_case(case: dict[str, Any]) -> dict[str, Any]:
    """In the case's own subprocess: 1 worker in-process, 2 workers as spawned gloo processes."""
    if case["impl"] == "baseline":  # the memory every case starts from: interpreter, torch, rmm, the data
        load_baby(Path(case["data_dir"]))
        return {"peak_rss_mib": peak_rss_mib()}
    if case["workers"] == 1:
        return time_steps(case)
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    context = mp.get_context("spawn")
    results = context.SimpleQueue()
    mp.start_processes(_ddp_worker, args=(case, port, results), nprocs=case["workers"], start_method="spawn")
    by_rank = dict(results.get() for _ in range(case["workers"]))
    out = dict(by_rank[0])
    out["peak_rss_mib"] = max(r["peak_rss_mib"] for r in by_rank.values())
    out["total_rss_mib"] = sum(r["peak_rss_mib"] for r in by_rank.values())
    out["step_s"] = max(r["step_s"] for r in by_rank.values())
    out["epoch_s"] = max(r["epoch_s"] for r in by_rank.values())
    return out


# ---------------------------------------------------------------------------------------------- kNN build


def structured_features(num_items: int, dim: int = 384, clusters: int = 200, seed: int = SEED) -> Tensor:
    """Clustered unit-norm rows, filled in place (no full-size temporaries, so they do not inflate the peak)."""
    generator = torch.Generator().manual_seed(seed)
    centroids = torch.randn(clusters, dim, generator=generator)
    out = torch.empty(num_items, dim)
    for start in range(0, num_items, 65_536):
        rows = out[start:start + 65_536]
        labels = torch.randint(clusters, (len(rows),), generator=generator)
        torch.randn(rows.shape, generator=generator, out=rows)
        rows.mul_(0.7).add_(centroids[labels])
        rows.div_(rows.norm(dim=1, keepdim=True))
    return out


def knn_case(case: dict[str, Any]) -> dict[str, Any]:
    """Build the kNN graph of ``case["items"]`` x 384 features; computes only ``case["chunks"]`` row chunks
    spread evenly over the catalogue unless ``case["full"]`` (see the module docstring)."""
    import rmm.data.graph as graph_module

    torch.set_num_threads(case["threads"])
    device = torch.device(case["device"])
    features = structured_features(case["items"]).to(device)
    base_rss = peak_rss_mib()
    real_merge = graph_module._merge_row_chunk
    num_items, k = case["items"], 10
    chunk, tile = graph_module.KNN_ROWS, graph_module.CHUNK_ELEMENTS // graph_module.KNN_ROWS
    starts = list(range(0, num_items, chunk))
    sampled = {starts[round(i * (len(starts) - 1) / max(1, case["chunks"] - 1))] for i in range(case["chunks"])}
    tiles = {start: math.ceil((num_items - start) / tile) for start in starts}  # blocks of each row chunk
    computed = {"tiles": 0, "rows": 0, "seconds": 0.0}

    def sampled_merge(blocks: Any, top: Any, start: int, stop: int, column_tile: int) -> None:
        if case["full"] or start in sampled:
            tic = time.perf_counter()
            real_merge(blocks, top, start, stop, column_tile)
            computed["seconds"] += time.perf_counter() - tic
            computed["tiles"] += tiles[start]
            computed["rows"] += stop - start
            if case["full"] and (start // chunk) % 64 == 63:  # an hour-long build says how far it is
                left = sum(tiles[s] for s in starts if s > start) / computed["tiles"] * computed["seconds"]
                print(f"kNN {num_items:,} items: {stop:,} rows in {computed['seconds']:,.0f}s, "
                      f"~{left:,.0f}s left", file=sys.stderr, flush=True)
            return
        # k placeholder neighbours, at the lowest cosine (-1) so that no real candidate is kept out
        rows = torch.arange(start, stop, device=device).unsqueeze(1)
        top.merge(slice(start, stop), torch.full((stop - start, k), -1.0, device=device),
                  (rows + torch.arange(1, k + 1, device=device)) % num_items)

    graph_module._merge_row_chunk = sampled_merge
    tic = time.perf_counter()
    graph = KNNSpec(k=k, similarity="cosine", normalization="sym").build(features)
    wall_s = time.perf_counter() - tic
    per_tile = computed["seconds"] / computed["tiles"]
    return {"items": num_items, "edges": int(graph._nnz()), "computed_rows": computed["rows"], "wall_s": wall_s,
            "build_s": wall_s - computed["seconds"] + per_tile * sum(tiles.values()),
            "features_mib": features.nbytes / 2**20, "rss_after_features_mib": base_rss,
            "peak_rss_mib": peak_rss_mib(),
            "peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else None}


# -------------------------------------------------------------------------------------------------- driver


def run_in_subprocess(kind: str, case: dict[str, Any], *, show_progress: bool = False) -> dict[str, Any]:
    """Run one case in a fresh interpreter; its last stdout line is the result. ``show_progress`` lets its
    stderr through to ours (errors then appear above the traceback instead of in it)."""
    proc = subprocess.run([sys.executable, __file__, f"--{kind}-case", json.dumps(case)], stdout=subprocess.PIPE,
                          stderr=None if show_progress else subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} case {case} failed:\n{(proc.stderr or '')[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def machine() -> str:
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores, torch {torch.__version__}, "
            f"{'CUDA ' + torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")


def train_table(args: argparse.Namespace, tmp: str) -> None:
    """Generate the Baby-sized data in ``tmp`` and print the training table (one subprocess per case)."""
    data_dir = Path(tmp)
    generated = subprocess.run([sys.executable, __file__, "--data-case", str(data_dir)], check=True,
                               capture_output=True, text=True)
    train = np.load(data_dir / "train.npz")
    print(f"data: {BABY['num_users']:,} users, {BABY['num_items']:,} items, {int(train['interactions']):,} "
          f"interactions ({len(train['users']):,} train pairs), image 4096-d, text 384-d "
          f"({json.loads(generated.stdout.splitlines()[-1])['seconds']:.0f}s to generate)")
    baseline = run_in_subprocess("train", {"impl": "baseline", "data_dir": str(data_dir)})["peak_rss_mib"]
    print(f"{args.threads} torch thread(s) per process; load average before: "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print(f"baseline peak RSS (interpreter + torch + rmm imported, dataset and features loaded): "
          f"{baseline:,.0f} MiB\n")
    print("| model | implementation | workers | set-up s | per-epoch work s | sampler s | step ms | steps/epoch | "
          "epoch s (extrap.) | rmm / ref | peak RSS MiB / process |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in args.models:
        impls = [("rmm", w, {}) for w in args.workers]
        if name == "lattice":  # LATTICE's non-default mode: a gradient through the learned graph every step
            impls.insert(1, ("rmm", 1, {"graph_update": "step"}))
        mmrec = protocol_defaults(model_spec(name).config_class, "mmrec") if name in PROTOCOL_ROWS else None
        if mmrec is not None:
            impls.insert(1, ("rmm", 1, mmrec))
        if not args.skip_reference and name in REFERENCES:
            impls.insert(0, ("dense ref", 1, {}))
        ref_epoch_s = None
        for impl, workers, params in impls:
            case = {"model": name, "impl": impl, "workers": workers, "steps": args.steps, "warmup": args.warmup,
                    "threads": args.threads, "data_dir": str(data_dir), "cache_dir": str(data_dir / "knn-cache"),
                    "params": params}
            r = run_in_subprocess("train", case)
            setup = f"{r['setup_s']:.1f}" + (f" (kNN cache {r['knn_cache']})" if "knn_cache" in r else "")
            rss = f"{r['peak_rss_mib']:,.0f}" + (f" (x{workers} = {r['total_rss_mib']:,.0f})" if workers > 1
                                                 else "")
            assert r["loss_finite"], f"{name} {impl}: non-finite loss"
            if impl == "dense ref":
                ref_epoch_s = r["epoch_s"]
            ratio = "" if ref_epoch_s is None or impl == "dense ref" else f"{r['epoch_s'] / ref_epoch_s:.2f}"
            label = impl
            if impl == "rmm" and mmrec is not None:
                label += " (protocol mmrec)" if params == mmrec else " (strict)"
            if params != mmrec:
                label += "".join(f" ({k}={v})" for k, v in params.items())
            print(f"| {name} | {label} | {workers} | {setup} | {r['epoch_work_s']:.2f} | {r['sampler_s']:.2f} | "
                  f"{1000 * r['step_s']:.0f} | {r['steps_per_epoch']} | {r['epoch_s']:.1f} | {ratio} | {rss} |",
                  flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--workers", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (every case)")
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-knn", action="store_true")
    parser.add_argument("--skip-train", action="store_true", help="only the kNN builds")
    parser.add_argument("--knn-items", nargs="+", type=int, default=[100_000, 1_000_000])
    parser.add_argument("--knn-chunks", type=int, default=8, help="row chunks computed (see docstring)")
    parser.add_argument("--knn-full", action="store_true", help="compute every chunk (75 min at 1M on 2 CPU cores)")
    parser.add_argument("--knn-threads", type=int, default=os.cpu_count(), help="torch threads of the kNN build")
    parser.add_argument("--knn-device", default="cpu", help="where the kNN build runs, e.g. cuda")
    parser.add_argument("--train-case", help=argparse.SUPPRESS)
    parser.add_argument("--knn-case", help=argparse.SUPPRESS)
    parser.add_argument("--data-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.train_case:
        print(json.dumps(run_case(json.loads(args.train_case))))
        return
    if args.knn_case:
        print(json.dumps(knn_case(json.loads(args.knn_case))))
        return
    if args.data_case:
        tic = time.perf_counter()
        make_baby(Path(args.data_case))
        print(json.dumps({"seconds": time.perf_counter() - tic}))
        return

    print(f"machine: {machine()}")
    with tempfile.TemporaryDirectory(prefix="rmm-bench-") as tmp:
        if not args.skip_train:
            train_table(args, tmp)
        if args.skip_knn:
            return
        print(f"\nkNN build on {args.knn_device}: {args.knn_threads} torch thread(s)")
        print("\n| kNN graph (k=10, cosine, sym) | items | edges | computed rows | build s | "
              "features MiB | RSS after features MiB | peak RSS MiB |")
        print("|---|---|---|---|---|---|---|---|")
        for items in args.knn_items:
            r = run_in_subprocess("knn", {"items": items, "chunks": args.knn_chunks, "full": args.knn_full,
                                          "threads": args.knn_threads, "device": args.knn_device},
                                  show_progress=args.knn_full)
            build_s = f"{r['build_s']:.0f}" + ("" if r["computed_rows"] == items else " (extrap.)")
            peak = f"{r['peak_rss_mib']:,.0f}" + (f" (GPU {r['peak_gpu_mib']:,.0f})" if r["peak_gpu_mib"] else "")
            print(f"| rmm blocks | {items:,} | {r['edges']:,} | {r['computed_rows']:,} | {build_s} | "
                  f"{r['features_mib']:,.0f} | {r['rss_after_features_mib']:,.0f} | {peak} |", flush=True)
        dense = ", ".join(f"{n:,} items: {n * n * 4 / 2**30:,.0f} GiB" for n in args.knn_items)
        print(f"\nA dense I x I float32 similarity (the reference's first step) would need {dense}.")
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
