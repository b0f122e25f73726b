"""Every rmm model's epoch time and peak memory at Baby size next to MMRec's own code for the same model.

    nice -n 19 .venv/bin/python bench/mmrec_zoo.py --mmrec-src /path/MMRec/src \\
        --extra-src /path/MENTOR/src /path/COHESION/src [--deps /tmp/mmrec-deps] [--models freedom lgmrec]
    nice -n 19 .venv/bin/python bench/mmrec_zoo.py --mmrec-src ... --models bprmf vbpr --steps 1 --warmup 0  # smoke

The reference is not code of this repository: the script imports MMRec's model classes at run time from the
checkouts given (nothing of MMRec is copied here). To get them::

    git clone https://github.com/enoche/MMRec           # --mmrec-src MMRec/src
    git clone https://github.com/Jinfeng-Xu/MENTOR      # --extra-src MENTOR/src   (MENTOR, built on MMRec)
    git clone https://github.com/Jinfeng-Xu/COHESION    # --extra-src COHESION/src (COHESION, built on MMRec)

MENTOR and COHESION ship their own ``common`` package, so a model's case puts only its own repository's ``src`` on
``sys.path`` (each case is its own process).

Data: :func:`train.make_baby` (bench/train.py's Baby-sized synthetic set, 19,445 users x 7,050 items, ~128k train
pairs, 4096-d image and 384-d text features), generated once. For MMRec it is written as MMRec's models read it:
``image_feat.npy`` / ``text_feat.npy``; ``user_graph_dict.npy`` (DualGNN, DRAGON, MENTOR, COHESION) as MMRec's
``preprocessing/dualgnn-gen-u-u-matrix.py`` builds it from the train pairs (per user: the users sharing train items,
by shared count, at most 200, ``[ids, counts]``; computed sparse here, ties towards the smaller id); DA-MRS's
``item_graph_dict_2.npy`` as DA-MRS's ``build_iib_graph.py --topk=2`` (per item: its 2 items sharing most train
users, at least 2 shared; DA-MRS reads only the ids). Each model gets its own dataset folder, so the kNN graphs
MMRec caches on disk (``mm_adj_*.pt``, ``image_adj_*.pt``) are built in its ``set-up s``, as in a first MMRec run.

MMRec case (``MMRec code``), one subprocess per model: the config is the repository's ``configs/overall.yaml`` +
``configs/dataset/baby.yaml`` + ``configs/model/<Model>.yaml``, each ``hyper_parameters`` key at the first value
of its grid list (as MMRec's ``quick_start`` runs its first combination), with ``data_path``/``dataset`` pointed
at the scratch folder and ``device`` cpu; ``init_seed(999)``; the model built with a minimal train loader that
gives what ``GeneralRecommender`` and the models call (``dataset.get_user_num()``, ``get_item_num()``,
``inter_matrix(form)`` built as MMRec's ``TrainDataLoader._create_sparse_matrix``). Then, as MMRec's
``Trainer._train_epoch`` runs an epoch: ``model.train()``, ``pre_epoch_processing()`` (``per-epoch work s``), the
sampler's epoch (``sampler s``: :class:`train.MMRecLoader`, pandas shuffle and slices and a Python rejection loop
per negative; no negatives for models with ``use_neg_sampling: False``, as MMRec) and the median optimiser step
(``calculate_loss``, summed if a tuple, backward, ``torch.optim.Adam(lr=learning_rate,
weight_decay=weight_decay)`` step) over ``--steps`` steps after ``--warmup``. For LATTICE the first batch's extra
cost (MMRec rebuilds the learned item graph there) is counted as per-epoch work, as in bench/train.py. CPU, 1 torch
thread, subnormals not flushed. ``epoch s`` = per-epoch work + sampler s + steps/epoch x median step.

rmm cases: bench/train.py's own ``impl: rmm`` case (:func:`train.time_steps`: strict defaults, kNN cache, the
training loop's sampler, fused Adam, subnormals flushed), plus a ``protocol mmrec`` row when the model's
``protocol_defaults(cls, "mmrec")`` is non-empty, and a ``protocol mmrec, MMRec's grid point`` row where rmm's
defaults change the work per step against the grid point MMRec runs (:data:`MMREC_GRID_POINT`: layers, edge
pruning): that row is the like-for-like one. ``rmm / MMRec`` is the epoch ratio.

Run-time shims, each listed under the table when used (nothing is installed into the venv or pyproject):

- ``--deps PATH``: a folder put on ``sys.path`` first, for the references' extra packages, outside the repo and
  the venv. sparsesvd 0.2.2 (2013) builds only with an old setuptools and Cython::

      python -m venv /tmp/svd-build && /tmp/svd-build/bin/pip install "setuptools<60" Cython numpy
      /tmp/svd-build/bin/pip install --no-build-isolation --target /tmp/mmrec-deps sparsesvd
      rm -rf /tmp/mmrec-deps/{numpy,scipy,Cython,cython,pyximport,bin}*   # keep only sparsesvd

  torch-scatter is a source-only package on PyPI that compiles against the installed torch (``pip install
  --no-build-isolation --target /tmp/mmrec-deps torch-scatter``, long). A package still missing is shimmed:
  ``torch_scatter`` (MMRec's slmrec.py imports ``scatter``, used only in commented-out code; ``scatter_add`` makes
  the degrees in ``utils.get_sparse_laplacian``, MGCN's and SMORE's kNN graphs) by both over
  ``Tensor.scatter_reduce``; ``sparsesvd`` (pgl.py) by ``scipy.sparse.linalg.svds`` (the same truncated SVD,
  factors in sparsesvd's layout ``(ut, s, vt)``, largest first); ``torch_sparse`` (cohesion.py imports it, uses
  none of it) by an empty module.
- ``scipy.sparse.dok_matrix._update``: MMRec's graph models fill their (U+I) x (U+I) adjacency with it; SciPy
  1.12 removed it. It was ``dict.update`` of the entries, and is put back as that (``self._dict.update``).
- ``Tensor.cuda`` returns the tensor unchanged (the cases run on CPU): MMRec's DA-MRS, GRCN, LATTICE, MGCN, SMORE and
  MENTOR call ``.cuda()`` regardless of ``device``.
- ``nn.Parameter(x).to(device)`` returns a copy that is no Parameter, as it does when ``device`` is a GPU:
  DualGNN, DRAGON, MENTOR and COHESION assign ``self.result_embed = nn.Parameter(...).to(self.device)`` and later
  overwrite it with a tensor, which raises on CPU, where ``.to`` returns the Parameter itself. (On a GPU the table
  is therefore not trained, and so not here either.) ``Module.to`` is unchanged.
- ``models.common`` aliases ``common``: MMRec's layergcn.py imports ``models.common.abstract_recommender``, a path
  that does not exist in MMRec's tree.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import math
import os
import random
import re
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
import torch

import train
from rmm.config import protocol_defaults
from rmm.models.registry import MODELS as REGISTRY
from rmm.models.registry import model_spec

#: rmm registry name -> (MMRec class name, module under ``src/models``, repository whose ``src`` holds it).
COUNTERPARTS = {
    "bprmf": ("BPR", "bpr", "MMRec"), "lightgcn": ("LightGCN", "lightgcn", "MMRec"),
    "vbpr": ("VBPR", "vbpr", "MMRec"), "mmgcn": ("MMGCN", "mmgcn", "MMRec"), "grcn": ("GRCN", "grcn", "MMRec"),
    "lattice": ("LATTICE", "lattice", "MMRec"), "freedom": ("FREEDOM", "freedom", "MMRec"),
    "bm3": ("BM3", "bm3", "MMRec"), "lgmrec": ("LGMRec", "lgmrec", "MMRec"),
    "layergcn": ("LayerGCN", "layergcn", "MMRec"), "selfcf": ("SELFCFED_LGN", "selfcfed_lgn", "MMRec"),
    "mgcn": ("MGCN", "mgcn", "MMRec"), "slmrec": ("SLMRec", "slmrec", "MMRec"), "smore": ("SMORE", "smore", "MMRec"),
    "mvgae": ("MVGAE", "mvgae", "MMRec"), "dualgnn": ("DualGNN", "dualgnn", "MMRec"),
    "dragon": ("DRAGON", "dragon", "MMRec"), "damrs": ("DAMRS", "damrs", "MMRec"), "pgl": ("PGL", "pgl", "MMRec"),
    "mmgcf": ("MMGCF", "mmgcf", "MMRec"), "mentor": ("MENTOR", "mentor", "MENTOR"),
    "cohesion": ("COHESION", "cohesion", "COHESION"),
}
#: rmm hyperparameters at the grid point MMRec runs (the first value of each of its grid lists), where rmm's
#: defaults change the work per step (more layers; more or less edge pruning): these models also get a
#: like-for-like row.
MMREC_GRID_POINT: dict[str, dict[str, Any]] = {
    "layergcn": {"dropout": 0.0},  # LayerGCN.yaml dropout [0.0, 0.1, 0.2]: no pruning (rmm's default prunes 0.1)
    "selfcf": {"num_layers": 1},  # SELFCFED_LGN.yaml n_layers [1, 2]
    "mmgcf": {"num_ui_layers": 1, "dropout": 0.2},  # MMGCF.yaml n_ui_layers [1, 2, 3], dropout [0.2, ...]
    "cohesion": {"num_layers": 1},  # COHESION.yaml num_layer [1, 2, 3, 4]
}
USER_GRAPH_MODELS = ("dualgnn", "dragon", "mentor", "cohesion")
MMREC_SEED = 999  # overall.yaml's ``seed: [999]``


# ---------------------------------------------------------------------------------------- MMRec's inputs


def cooccurrence_top(rows: np.ndarray, cols: np.ndarray, num_rows: int, num_cols: int, k: int,
                     min_count: int = 1) -> dict[int, list[list[float]]]:
    """Per row id of the pairs: the other rows sharing a column with it, by shared count (ties towards the smaller
    id), at most ``k`` with at least ``min_count``, as ``{row: [ids, counts]}``; rows with none are left out.
    Sparse :math:`R R^\\top`, never the dense matrix MMRec's script fills."""
    import scipy.sparse as sp

    incidence = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(num_rows, num_cols))
    incidence.data[:] = 1.0  # duplicate pairs count once, as the script's sets
    shared = (incidence @ incidence.T).tocsr()
    shared.setdiag(0)
    shared.eliminate_zeros()
    out = {}
    for row in range(num_rows):
        start, stop = shared.indptr[row], shared.indptr[row + 1]
        ids, counts = shared.indices[start:stop], shared.data[start:stop]
        keep = counts >= min_count
        ids, counts = ids[keep], counts[keep]
        if len(ids) == 0:
            continue
        order = np.lexsort((ids, -counts))[:k]
        out[row] = [ids[order].tolist(), counts[order].astype(float).tolist()]
    return out


def write_mmrec_inputs(data_dir: Path, models: list[str]) -> Path:
    """The files MMRec's models read, in ``data_dir / "mmrec"``: the features under MMRec's names and, when a
    chosen model needs them, the user-user and item-item graph dictionaries."""
    out = data_dir / "mmrec"
    out.mkdir(exist_ok=True)
    for ours, theirs in (("image.npy", "image_feat.npy"), ("text.npy", "text_feat.npy")):
        if not (out / theirs).exists():
            (out / theirs).symlink_to(data_dir / ours)
    pairs = np.load(data_dir / "train.npz")
    users, items = pairs["users"], pairs["items"]
    num_users, num_items = train.BABY["num_users"], train.BABY["num_items"]
    if any(m in USER_GRAPH_MODELS for m in models) and not (out / "user_graph_dict.npy").exists():
        # dualgnn-gen-u-u-matrix.py: every user gets an entry, an empty one when it shares no item
        graph = cooccurrence_top(users, items, num_users, num_items, k=200)
        full = {u: graph.get(u, [[], []]) for u in range(num_users)}
        np.save(out / "user_graph_dict.npy", full, allow_pickle=True)
    if "damrs" in models and not (out / "item_graph_dict_2.npy").exists():
        # build_iib_graph.py --topk=2: items sharing >= 2 train users
        np.save(out / "item_graph_dict_2.npy", cooccurrence_top(items, users, num_items, num_users, k=2, min_count=2),
                allow_pickle=True)
    return out


def model_dataset_dir(mmrec_dir: Path, scratch: Path, name: str) -> Path:
    """A fresh dataset folder for one model under ``scratch``: links to the shared inputs, no cached kNN graphs."""
    folder = scratch / "mmrec-datasets" / name
    folder.mkdir(parents=True)
    for path in mmrec_dir.glob("*.npy"):
        (folder / path.name).symlink_to(path.resolve())
    return folder


# ---------------------------------------------------------------------------------------- MMRec's config


def yaml_loader() -> type:
    """PyYAML's loader with floats such as ``1e-4`` read as numbers (YAML 1.1 needs a dot), as MMRec's
    ``Config._build_yaml_loader``."""
    import yaml

    class Loader(yaml.FullLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?|[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+][0-9]+)?|[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+\.[0-9_]*
                   |[-+]?\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$""", re.X),
        list("-+0123456789."))
    return Loader


class MMRecConfig(dict):
    """MMRec's ``Config`` as the models see it: ``config[key]``, ``None`` for a missing key."""

    def __missing__(self, key: str) -> None:
        return None


def mmrec_config(src: Path, model_class: str, dataset_dir: Path) -> MMRecConfig:
    """overall.yaml + dataset/baby.yaml + model/<Model>.yaml, hyper-parameters at their grid's first value."""
    import yaml

    values: dict[str, Any] = {}
    hyper: list[str] = []
    for path in (src / "configs" / "overall.yaml", src / "configs" / "dataset" / "baby.yaml",
                 src / "configs" / "model" / f"{model_class}.yaml"):
        loaded = yaml.load(path.read_text(encoding="utf-8"), Loader=yaml_loader()) or {}
        hyper.extend(loaded.get("hyper_parameters") or [])
        values.update(loaded)
    values["hyper_parameters"] = list(dict.fromkeys(["seed", *hyper]))
    for key in values["hyper_parameters"]:  # quick_start's first combination
        if isinstance(values.get(key), list):
            values[key] = values[key][0]
    values.update(model=model_class, dataset=dataset_dir.name, data_path=str(dataset_dir.parent) + os.sep,
                  use_gpu=False, device=torch.device("cpu"), valid_metric_bigger=True)
    return MMRecConfig(values)


class TrainDataset:
    """What the models read of MMRec's ``RecDataset`` (the train split)."""

    def __init__(self, frame: Any, config: MMRecConfig) -> None:
        self.df = frame
        self.uid_field, self.iid_field = config["USER_ID_FIELD"], config["ITEM_ID_FIELD"]
        self.user_num, self.item_num = train.BABY["num_users"], train.BABY["num_items"]
        self.inter_num = len(frame)

    def get_user_num(self) -> int:
        return self.user_num

    def get_item_num(self) -> int:
        return self.item_num

    def __len__(self) -> int:
        return len(self.df)


class TrainLoader:
    """What the models read of MMRec's ``TrainDataLoader``: ``dataset`` and ``inter_matrix``."""

    def __init__(self, dataset: TrainDataset, config: MMRecConfig) -> None:
        self.dataset, self.config = dataset, config
        self.batch_size = config["train_batch_size"]

    def inter_matrix(self, form: str = "coo", value_field: str | None = None) -> Any:
        """As ``TrainDataLoader._create_sparse_matrix``: ones at the train pairs, in the frame's order."""
        from scipy.sparse import coo_matrix

        if value_field is not None:
            raise NotImplementedError(f"value_field={value_field!r}: the Baby train frame has only user and item")
        frame = self.dataset.df
        matrix = coo_matrix((np.ones(len(frame)), (frame[self.dataset.uid_field].values,
                                                   frame[self.dataset.iid_field].values)),
                            shape=(self.dataset.user_num, self.dataset.item_num))
        if form == "coo":
            return matrix
        if form == "csr":
            return matrix.tocsr()
        raise NotImplementedError(f"sparse matrix format {form!r} has not been implemented (MMRec: coo, csr)")


class MMRecBatches(train.MMRecLoader):
    """:class:`train.MMRecLoader` yielding MMRec's batch tensor: (3, B) user, positive, negative ids, or (2, B)
    without negatives when the model's config has ``use_neg_sampling: False``."""

    def __init__(self, graph: Any, seed: int, negatives: bool) -> None:
        super().__init__(graph, seed)
        self.negatives = negatives

    def batch(self, rows: Any) -> torch.Tensor:  # type: ignore[override]
        users, items = torch.tensor(rows["user"].values).long(), torch.tensor(rows["item"].values).long()
        if not self.negatives:
            return torch.cat([users[None], items[None]]).clone()
        negatives = []
        for user in rows["user"]:
            item = self.rng.sample(self.items, 1)[0]
            while item in self.history[user]:
                item = self.rng.sample(self.items, 1)[0]
            negatives.append(item)
        return torch.cat([users[None], items[None], torch.tensor(negatives).long()[None]]).clone()


# ------------------------------------------------------------------------------------------------- shims


def scatter(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
            dim_size: int | None = None, reduce: str = "sum") -> torch.Tensor:
    """``torch_scatter.scatter`` over ``Tensor.scatter_reduce`` (sum, mean, max, min, mul)."""
    dim = dim % src.dim()
    if index.dim() == 1 and src.dim() > 1:
        shape = [1] * src.dim()
        shape[dim] = -1
        index = index.view(shape).expand_as(src)
    if out is None:
        size = list(src.shape)
        size[dim] = dim_size if dim_size is not None else int(index.max()) + 1 if index.numel() else 0
        out = torch.zeros(size, dtype=src.dtype, device=src.device)
    mode = {"add": "sum", "sum": "sum", "mean": "mean", "max": "amax", "min": "amin", "mul": "prod"}[reduce]
    return out.scatter_reduce(dim, index, src, mode, include_self=False)


def scatter_add(src: torch.Tensor, index: torch.Tensor, dim: int = -1, out: torch.Tensor | None = None,
                dim_size: int | None = None) -> torch.Tensor:
    """``torch_scatter.scatter_add`` (MMRec's ``utils.get_sparse_laplacian``, behind MGCN's and SMORE's graphs)."""
    return scatter(src, index, dim, out, dim_size, "sum")


def sparsesvd(matrix: Any, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``sparsesvd.sparsesvd`` over ``scipy.sparse.linalg.svds``: ``(ut, s, vt)``, ``ut`` (k, m), ``vt`` (k, n),
    singular values largest first."""
    from scipy.sparse.linalg import svds

    u, s, vt = svds(matrix.astype(np.float64), k=k)
    order = np.argsort(-s)
    return u[:, order].T, s[order], vt[order]


def install_shims(src: Path, deps: str | None) -> list[tuple[str, str]]:
    """Put ``deps`` and the model's ``src`` on ``sys.path`` and install the shims still needed; returns their
    ``(pattern of the model source that uses it, note)`` pairs."""
    notes = []
    if deps:
        sys.path.insert(0, deps)
    sys.path.insert(0, str(src))
    try:  # first, so that PyG sees which optional packages are really there, not the stand-ins below
        importlib.import_module("torch_geometric")
    except ImportError:
        logging.getLogger(__name__).info("torch_geometric not installed; the models that import it will fail")
    for name, attrs, note in (
            ("torch_scatter", {"scatter": scatter, "scatter_add": scatter_add},
             "torch_scatter: `scatter`, `scatter_add` over Tensor.scatter_reduce"),
            ("sparsesvd", {"sparsesvd": sparsesvd}, "sparsesvd: scipy.sparse.linalg.svds"),
            ("torch_sparse", {}, "torch_sparse: empty module (imported, unused)")):
        try:
            importlib.import_module(name)
        except ImportError:
            module = types.ModuleType(name)
            module.__dict__.update(attrs)
            sys.modules[name] = module
            uses = rf"^\s*(from|import)\s+{name}\b" + ("|build_knn_normalized_graph" if name == "torch_scatter" else "")
            notes.append((uses, note))
    import scipy.sparse as sp

    if not hasattr(sp.dok_matrix, "_update"):  # dict.update of the entries, removed in SciPy 1.12
        sp.dok_matrix._update = lambda self, entries: self._dict.update(entries)
        notes.append((r"\._update\(", "dok_matrix._update as dict.update (SciPy >= 1.12 lacks it)"))
    torch.Tensor.cuda = lambda self, *args, **kwargs: self  # type: ignore[method-assign]  # the cases run on CPU

    def parameter_to(self: torch.nn.Parameter, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``nn.Parameter(x).to(device)`` as on a GPU: a copy that is no Parameter (``Module.to`` unchanged)."""
        out = torch.Tensor.to(self, *args, **kwargs)
        if out is self and sys._getframe(1).f_code.co_name != "convert":  # not Module.to's own converter
            out = torch.Tensor.to(self, *args, **{**kwargs, "copy": True})
        return out

    torch.nn.Parameter.to = parameter_to  # type: ignore[method-assign]
    notes.append((r"result_embed = nn\.Parameter", "nn.Parameter(x).to(device) is a plain tensor, as on a GPU"))
    common = importlib.import_module("common")
    sys.modules.setdefault("models.common", common)
    for sub in ("abstract_recommender", "loss", "init"):
        sys.modules.setdefault(f"models.common.{sub}", importlib.import_module(f"common.{sub}"))
    return notes


# ---------------------------------------------------------------------------------------------------- cases


def mmrec_case(case: dict[str, Any]) -> dict[str, Any]:
    """Build MMRec's model ``case["model"]`` and time its epoch as MMRec's trainer runs it."""
    import pandas as pd

    torch.set_num_threads(case["threads"])
    model_class, module, _ = COUNTERPARTS[case["model"]]
    src = Path(case["src"])
    notes = install_shims(src, case.get("deps"))
    tic = time.perf_counter()
    graph, _ = train.load_baby(Path(case["data_dir"]))
    config = mmrec_config(src, model_class, Path(case["dataset_dir"]))
    frame = pd.DataFrame({config["USER_ID_FIELD"]: graph.users.numpy(), config["ITEM_ID_FIELD"]: graph.items.numpy()})
    loader = TrainLoader(TrainDataset(frame, config), config)
    load_s = time.perf_counter() - tic
    cls = getattr(importlib.import_module(f"models.{module}"), model_class)
    source = (src / "models" / f"{module}.py").read_text(encoding="utf-8")
    notes = [note for pattern, note in notes if re.search(pattern, source, re.M)]  # the shims this model uses
    random.seed(config["seed"])  # MMRec's init_seed
    np.random.seed(config["seed"])
    torch.manual_seed(config["seed"])
    tic = time.perf_counter()
    model = cls(config, loader).to(config["device"])
    negatives = config["use_neg_sampling"] is not False
    sampler = MMRecBatches(graph, train.SEED, negatives)
    setup_s = time.perf_counter() - tic
    weight_decay = float(config["weight_decay"] or 0.0)  # MMRec's Trainer: eval() of a string such as "1e-4"
    optimizer = torch.optim.Adam(model.parameters(), lr=config["learning_rate"], weight_decay=weight_decay)
    model.train()
    tic = time.perf_counter()
    batches = sampler.epoch(train.SEED, 1, config["train_batch_size"])
    sampler_s = time.perf_counter() - tic
    tic = time.perf_counter()
    model.pre_epoch_processing()
    epoch_work_s = time.perf_counter() - tic
    times, losses = [], []
    for batch in batches[:case["warmup"] + case["steps"]]:
        tic = time.perf_counter()
        optimizer.zero_grad()
        loss = model.calculate_loss(batch)
        loss = sum(loss) if isinstance(loss, tuple) else loss
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - tic)
        losses.append(float(loss.detach()))
    step_s = float(np.median(times[case["warmup"]:]))
    if case["model"] == "lattice":  # the first batch rebuilds the learned item graph
        epoch_work_s += max(0.0, times[0] - step_s)
    config_used = {k: config[k] for k in config["hyper_parameters"] if k != "seed"}
    config_used.update(learning_rate=config["learning_rate"], weight_decay=weight_decay,
                       use_neg_sampling=negatives)
    return {"load_s": load_s, "setup_s": setup_s, "epoch_work_s": epoch_work_s, "sampler_s": sampler_s,
            "step_s": step_s, "steps_per_epoch": len(batches),
            "epoch_s": epoch_work_s + sampler_s + len(batches) * step_s,
            "loss_finite": all(math.isfinite(v) for v in losses), "peak_rss_mib": train.peak_rss_mib(),
            "notes": notes, "config": config_used}


def run_subprocess(case: dict[str, Any]) -> dict[str, Any]:
    """One MMRec case in a fresh interpreter; on failure ``{"error": last line of its traceback}``."""
    proc = subprocess.run([sys.executable, __file__, "--mmrec-case", json.dumps(case)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
        return {"error": lines[-1] if lines else f"exit code {proc.returncode}", "stderr": proc.stderr[-3000:]}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def source_of(name: str, args: argparse.Namespace) -> Path | None:
    """The ``src`` folder holding the model's MMRec code, or None when no given checkout has it."""
    _, module, _ = COUNTERPARTS[name]
    for src in [args.mmrec_src, *args.extra_src]:
        if src and (Path(src) / "models" / f"{module}.py").is_file():
            return Path(src)
    return None


def row(name: str, label: str, r: dict[str, Any], ratio: str) -> str:
    return (f"| {name} | {label} | {r['setup_s']:.1f} | {r['epoch_work_s']:.2f} | {r['sampler_s']:.2f} | "
            f"{1000 * r['step_s']:.0f} | {r['steps_per_epoch']} | {r['epoch_s']:.1f} | {ratio} | "
            f"{r['peak_rss_mib']:,.0f} |")


def zoo_table(args: argparse.Namespace, tmp: str) -> None:
    """Generate (or reuse, ``--data-dir``) the data and print the table, one subprocess per case."""
    data_dir = Path(args.data_dir or tmp)
    data_dir.mkdir(parents=True, exist_ok=True)
    tic = time.perf_counter()
    if not (data_dir / "train.npz").exists():
        subprocess.run([sys.executable, train.__file__, "--data-case", str(data_dir)], check=True,
                       capture_output=True)
    mmrec_dir = write_mmrec_inputs(data_dir, args.models)
    print(f"data: Baby-sized ({train.BABY['num_users']:,} users, {train.BABY['num_items']:,} items, "
          f"{len(np.load(data_dir / 'train.npz')['users']):,} train pairs), MMRec inputs written "
          f"({time.perf_counter() - tic:.0f}s)")
    print(f"{args.threads} torch thread(s) per process; --steps {args.steps} --warmup {args.warmup}; "
          f"load average before: {', '.join(f'{v:.1f}' for v in os.getloadavg())}\n")
    print("| model | implementation | set-up s | per-epoch work s | sampler s | step ms | steps/epoch | epoch s | "
          "rmm / MMRec | peak RSS MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    notes: dict[str, None] = {}
    configs: dict[str, dict] = {}
    for name in args.models:
        model_class, _, repo = COUNTERPARTS[name]
        src = source_of(name, args)
        ref_epoch_s = None
        if args.skip_mmrec:
            pass
        elif src is None:
            print(f"| {name} | MMRec code | not run: no {repo} checkout with models/{COUNTERPARTS[name][1]}.py "
                  f"given (--mmrec-src / --extra-src) |||||||| ", flush=True)
        else:
            r = run_subprocess({"model": name, "src": str(src), "deps": args.deps, "data_dir": str(data_dir),
                                "dataset_dir": str(model_dataset_dir(mmrec_dir, Path(tmp), name)), "steps": args.steps,
                                "warmup": args.warmup, "threads": args.threads})
            if "error" in r:
                print(f"| {name} | MMRec code ({repo} {model_class}) | could not run: {r['error']} |||||||| ",
                      flush=True)
                if args.verbose:
                    print(r["stderr"], file=sys.stderr)
            else:
                ref_epoch_s = r["epoch_s"]
                label = f"MMRec code ({repo} {model_class})" + ("" if r["loss_finite"] else " (non-finite loss)")
                print(row(name, label, r, ""), flush=True)
                notes.update(dict.fromkeys(r["notes"]))
                configs[name] = r["config"]
        if args.skip_rmm:
            continue
        if name not in REGISTRY:
            print(f"| {name} | rmm | not run: not in rmm.models.registry.MODELS |||||||| ", flush=True)
            continue
        mmrec = protocol_defaults(model_spec(name).config_class, "mmrec")
        rows = [("rmm strict", {}), *([("rmm protocol mmrec", mmrec)] if mmrec else [])]
        if name in MMREC_GRID_POINT:
            rows.append(("rmm protocol mmrec, MMRec's grid point", {**mmrec, **MMREC_GRID_POINT[name]}))
        for label, params in rows:
            case = {"model": name, "impl": "rmm", "workers": 1, "steps": args.steps, "warmup": args.warmup,
                    "threads": args.threads, "data_dir": str(data_dir), "cache_dir": str(data_dir / "knn-cache"),
                    "params": params}
            try:
                r = train.run_in_subprocess("train", case)
            except RuntimeError as error:
                print(f"| {name} | {label} | could not run: {str(error).strip().splitlines()[-1]} |||||||| ",
                      flush=True)
                continue
            ratio = f"{r['epoch_s'] / ref_epoch_s:.2f}" if ref_epoch_s else ""
            print(row(name, label + ("" if r["loss_finite"] else " (non-finite loss)"), r, ratio), flush=True)
    print("\nMMRec configs (first value of each grid list):")
    for name, values in configs.items():
        print(f"- {name}: " + ", ".join(f"{k}={v}" for k, v in values.items()))
    print("\nnotes: Tensor.cuda is the identity, the cases run on CPU (MMRec calls .cuda() regardless of device); "
          "`models.common` aliases `common` (layergcn.py's import path)"
          + "".join(f"; shim {n}" for n in notes))


def main() -> None:
    registered = [name for name in COUNTERPARTS if name in REGISTRY]
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mmrec-src", help="MMRec checkout's src/ folder")
    parser.add_argument("--extra-src", nargs="*", default=[], help="src/ of MMRec-based repos (MENTOR, COHESION)")
    parser.add_argument("--deps", help="folder of the references' extra packages, put first on sys.path")
    parser.add_argument("--models", nargs="+", default=registered, choices=sorted(COUNTERPARTS),
                        help="default: every registered rmm model with an MMRec counterpart")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (every case)")
    parser.add_argument("--data-dir", help="keep the generated data (and MMRec inputs) here and reuse them")
    parser.add_argument("--skip-mmrec", action="store_true", help="only rmm's rows")
    parser.add_argument("--skip-rmm", action="store_true", help="only MMRec's rows")
    parser.add_argument("--verbose", action="store_true", help="print a failed MMRec case's traceback")
    parser.add_argument("--mmrec-case", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.mmrec_case:
        print(json.dumps(mmrec_case(json.loads(args.mmrec_case))))
        return
    print(f"machine: {train.machine()}")
    print(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
    with tempfile.TemporaryDirectory(prefix="rmm-bench-zoo-") as tmp:
        zoo_table(args, tmp)
    print(f"load average after: {', '.join(f'{v:.1f}' for v in os.getloadavg())}")


if __name__ == "__main__":
    main()
