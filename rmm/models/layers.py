"""Shared model maths, written once: BPR and auxiliary losses, regularisers, sparse propagation, frozen feature
banks and content fusion."""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import reduce
from typing import Any, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import TrainGraph, to_csr, valid_rows
from rmm.models.hparams.base import FUSIONS, PROJECTION_INITS, REG_NORMS


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    r"""Mean BPR loss :math:`-\ln \sigma(\hat{y}_{ui} - \hat{y}_{uj})`, via softplus so that large score gaps
    neither underflow to ``log(0)`` nor need MMRec's ``+1e-10`` fudge. Shapes: (B,), (B,) -> ()."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_reg(*embeddings: Tensor, norm: str = "squared") -> Tensor:
    r"""Regularisation of the batch's embeddings, ``B`` being the first dimension of the first tensor:

    - ``squared``: :math:`\frac{1}{2B}\sum \lVert e \rVert_F^2`, as in LightGCN's reference code (rmm's
      ``strict`` protocol);
    - ``frobenius``: :math:`\frac{1}{B}\sum \lVert e \rVert_F`, the *non-squared* norm of MMRec's ``EmbLoss``
      (``protocol: mmrec``), whose gradient :math:`e / \lVert e \rVert_F` does not shrink with the embeddings.

    Regularising only the rows a batch touches (instead of ``weight_decay`` on whole tables) keeps the
    penalty per interaction independent of the catalogue size.
    """
    if norm == "squared":
        return reduce(operator.add, (e.pow(2).sum() for e in embeddings)) / (2 * embeddings[0].shape[0])
    if norm == "frobenius":
        return reduce(operator.add, (torch.linalg.vector_norm(e) for e in embeddings)) / embeddings[0].shape[0]
    raise ValueError(f"reg norm must be one of {list(REG_NORMS)}, got {norm!r}")


class _SparseMM(torch.autograd.Function):
    """``adj @ x`` whose backward multiplies by a transpose built once, ``adj_t``, instead of transposing.

    ``torch.sparse.mm``'s own backward transposes the sparse matrix every step; a precomputed transpose (for a
    symmetric graph ``adj_t = adj``) measured ~4x faster per LightGCN epoch on 2 CPU cores. ``adj`` is a constant
    (no gradient).

    Under ``torch.autocast`` (``train.precision: bf16``) the product still runs in ``adj``'s dtype: ``x`` is
    cast up and autocast is suspended, because sparse CSR kernels have no bfloat16 version on the CPU, and a
    memory-bound sparse product gains nothing from tensor cores anyway. The gradient goes back in ``x``'s dtype.
    """

    @staticmethod
    def forward(ctx: Any, adj: Tensor, x: Tensor, adj_t: Tensor) -> Tensor:
        ctx.adj_t, ctx.x_dtype = adj_t, x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return torch.sparse.mm(adj, x.to(adj.dtype))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[None, Tensor, None]:
        with torch.autocast(grad.device.type, enabled=False):
            return None, torch.sparse.mm(ctx.adj_t, grad.to(ctx.adj_t.dtype)).to(ctx.x_dtype), None


def sparse_matmul(adj: Tensor, x: Tensor, adj_t: Tensor | None = None) -> Tensor:
    """``adj @ x`` for a constant sparse ``adj``, differentiable in ``x``.

    Args:
        adj: sparse (N, M), ideally CSR (see :func:`rmm.data.graph.to_csr`).
        x: dense (M, D).
        adj_t: ``adj`` transposed, same layout; None means ``adj`` is symmetric (it is its own transpose).

    Shapes:
        (N, M) sparse, (M, D) -> (N, D).
    """
    return _SparseMM.apply(adj, x, adj if adj_t is None else adj_t)


def propagate(adj: Tensor, x: Tensor, num_layers: int, adj_t: Tensor | None = None) -> Tensor:
    r"""LightGCN propagation: the mean of layers :math:`E^{(l+1)} = \tilde{A} E^{(l)}`, :math:`l < L`.

    .. math:: E = \frac{1}{L+1} \sum_{l=0}^{L} \tilde{A}^l E^{(0)}

    Args:
        adj: normalised adjacency (see ``TrainGraph.norm_adj``).
        x: layer-0 embeddings.
        num_layers: L, the number of propagation steps.
        adj_t: ``adj`` transposed, for the backward pass; None when ``adj`` is symmetric (the backward then
            multiplies by ``adj`` itself). A non-symmetric ``adj`` (MMRec LATTICE's row-normalised one) needs it.

    Shapes:
        adj: (N, N) sparse; x: (N, D) -> (N, D).
    """
    total = layer = x
    for _ in range(num_layers):
        layer = sparse_matmul(adj, layer, adj_t)
        total = total + layer  # a running sum: no (L+1, N, D) stack to copy into and reduce
    return total / (num_layers + 1)


def lightgcn(adj: Tensor, users: Tensor, items: Tensor, num_layers: int,
             adj_t: Tensor | None = None) -> tuple[Tensor, Tensor]:
    r"""The LightGCN backbone of the graph models: :func:`propagate` over the user-item graph from the stacked
    layer-0 embeddings :math:`[\mathbf{E}_U; \mathbf{E}_I]` (users first, as ``TrainGraph`` numbers the nodes),
    split back into users and items.

    Shapes:
        adj: (U+I, U+I) sparse (``adj_t`` its transpose, None if symmetric); users: (U, d); items: (I, d)
        -> (U, d), (I, d).
    """
    final = propagate(adj, torch.cat([users, items]), num_layers, adj_t)
    return final[: len(users)], final[len(users):]


def smooth(adj: Tensor, x: Tensor, num_layers: int, adj_t: Tensor | None = None) -> Tensor:
    r"""The last of ``num_layers`` plain graph convolutions, :math:`\tilde{A}^L x` (no layer mean): the
    item-item graph convolution of LATTICE and FREEDOM, LGMRec's modality propagation.

    Shapes:
        adj: (N, N) sparse (``adj_t`` its transpose, None if symmetric); x: (N, D) -> (N, D).
    """
    for _ in range(num_layers):
        x = sparse_matmul(adj, x, adj_t)
    return x


def aggregate(src: Tensor, dst: Tensor, weights: Tensor, x: Tensor, num_nodes: int) -> Tensor:
    r"""Weighted sum over incoming edges, :math:`\sum_{j \to v} w_{jv} x_j`, differentiable in ``weights`` and
    ``x`` at O(E * D) both ways.

    Use it instead of ``torch.sparse.mm`` when the edge weights need a gradient: the sparse product's backward
    for its sparse operand forms the dense ``grad @ x.T`` (N x N) before masking it to the edges.

    Shapes:
        src, dst, weights: (E,); x: (N, D) -> (num_nodes, D).
    """
    messages = weights.unsqueeze(1) * x[src]  # (E, D); promoted to the wider dtype under autocast
    return torch.zeros(num_nodes, x.shape[1], dtype=messages.dtype, device=x.device).index_add(0, dst, messages)


def segment_softmax(logits: Tensor, index: Tensor, num_segments: int) -> Tensor:
    """Softmax of ``logits`` within each group of equal ``index`` (e.g. over a node's incoming edges), like
    ``torch_geometric.utils.softmax`` without importing PyG (seconds at ``import rmm.models``).

    Shapes:
        logits, index: (E,) -> (E,).
    """
    top = torch.full((num_segments,), -torch.inf, dtype=logits.dtype, device=logits.device)
    top = top.scatter_reduce(0, index, logits.detach(), reduce="amax")
    exp = (logits - top[index]).exp()
    total = torch.zeros(num_segments, dtype=logits.dtype, device=logits.device).index_add(0, index, exp)
    return exp / total[index]


class EdgeIndex(nn.Module):
    r"""Fixed directed edges :math:`j \to v` (``src`` among ``num_src`` nodes, ``dst`` among ``num_dst``), kept with
    their CSR layouts by target and by source, so that edge-weighted sums and per-edge dot products, and their
    gradients, run as sparse-dense products instead of (E, D) gathers, products and scatters.

    The autograd of ``w[:, None] * x[src]`` then ``index_add`` materialises three (E, D) temporaries and
    accumulates the gradient of ``x[src]`` by a sorting ``index_put``; the CSR products read each row once. The
    results are the same sums in another order (float rounding apart). Sorting the edges is done once here.

    Shapes:
        src, dst: (E,) int64.
    """

    # Buffers (registered in __init__): the edges, their orders by target and by source, and both CSR layouts.
    src: Tensor
    dst: Tensor
    by_dst: Tensor
    by_src: Tensor
    at_dst: Tensor
    dst_crow: Tensor
    dst_col: Tensor
    src_crow: Tensor
    src_col: Tensor

    def __init__(self, src: Tensor, dst: Tensor, num_dst: int, num_src: int) -> None:
        super().__init__()
        self.num_dst, self.num_src = num_dst, num_src
        by_dst = torch.argsort(dst * num_src + src)  # CSR of the (num_dst, num_src) matrix
        by_src = torch.argsort(src * num_dst + dst)  # CSR of its transpose
        at_dst = torch.empty_like(by_dst)
        at_dst[by_dst] = torch.arange(len(by_dst), device=by_dst.device)  # edge e's position in the CSR
        for name, tensor in {"src": src, "dst": dst, "by_dst": by_dst, "by_src": by_src, "at_dst": at_dst,
                             "dst_crow": _crow(dst, num_dst), "dst_col": src[by_dst],
                             "src_crow": _crow(src, num_src), "src_col": dst[by_src]}.items():
            self.register_buffer(name, tensor, persistent=False)  # rebuilt from the graph, never checkpointed

    def matrix(self, values: Tensor, transpose: bool = False) -> Tensor:
        """The sparse CSR (num_dst, num_src) matrix with ``values`` (E,) on the edges, or its transpose."""
        crow, col, order, shape = ((self.src_crow, self.src_col, self.by_src, (self.num_src, self.num_dst))
                                   if transpose else
                                   (self.dst_crow, self.dst_col, self.by_dst, (self.num_dst, self.num_src)))
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(crow, col, values[order], shape, check_invariants=False)

    def row_dots(self, x_dst: Tensor, x_src: Tensor) -> Tensor:
        """Per-edge dot products without autograd: ``sampled_addmm`` on the CSR pattern (measured ~6x faster on
        the CPU than gathering both (E, D) row sets), back in edge order. Shapes: as :meth:`dot`."""
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
            pattern = torch.sparse_csr_tensor(self.dst_crow, self.dst_col, x_dst.new_zeros(len(self.src)),
                                              (self.num_dst, self.num_src), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, x_dst, x_src.T, beta=0.0).values()[self.at_dst]

    def weighted_sum(self, weights: Tensor, x: Tensor) -> Tensor:
        r""":math:`\sum_{j \to v} w_{jv} x_j` for every target v, differentiable in ``weights`` and ``x``.

        Shapes: weights (E,); x (num_src, D) -> (num_dst, D)."""
        return _WeightedSum.apply(weights, x, self)

    def dot(self, x_dst: Tensor, x_src: Tensor) -> Tensor:
        r"""Per-edge :math:`x_v^\top x_j`, differentiable in both.

        Shapes: x_dst (num_dst, D); x_src (num_src, D) -> (E,)."""
        return _EdgeDot.apply(x_dst, x_src, self)


def _crow(rows: Tensor, num_rows: int) -> Tensor:
    """CSR row pointers of edges with row ids ``rows``, once sorted by row."""
    counts = torch.bincount(rows, minlength=num_rows)
    return torch.cat([counts.new_zeros(1), counts.cumsum(0)])


class _WeightedSum(torch.autograd.Function):
    r""":meth:`EdgeIndex.weighted_sum`: ``A(w) @ x``; backward ``A(w)^T @ g`` for ``x`` and the per-edge dots
    :math:`g_v^\top x_j` for ``w``. Runs outside autocast in at least float32 (no bfloat16 sparse kernels on the
    CPU); the gradients go back in the inputs' dtypes."""

    @staticmethod
    def forward(ctx: Any, weights: Tensor, x: Tensor, edges: EdgeIndex) -> Tensor:
        ctx.edges, ctx.dtypes = edges, (weights.dtype, x.dtype)
        weights, x = _sparse_dtype(weights, x)
        ctx.save_for_backward(weights, x)
        with torch.autocast(x.device.type, enabled=False):
            return torch.sparse.mm(edges.matrix(weights), x)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        weights, x = ctx.saved_tensors
        edges, grad_weights, grad_x = ctx.edges, None, None
        grad = grad.to(weights.dtype).contiguous()
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_weights = edges.row_dots(grad, x).to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                grad_x = torch.sparse.mm(edges.matrix(weights, transpose=True), grad).to(ctx.dtypes[1])
        return grad_weights, grad_x, None


class _EdgeDot(torch.autograd.Function):
    """:meth:`EdgeIndex.dot`; backward ``A(g) @ x_src`` for ``x_dst`` and ``A(g)^T @ x_dst`` for ``x_src``."""

    @staticmethod
    def forward(ctx: Any, x_dst: Tensor, x_src: Tensor, edges: EdgeIndex) -> Tensor:
        ctx.edges, ctx.dtypes = edges, (x_dst.dtype, x_src.dtype)
        x_dst, x_src = _sparse_dtype(x_dst, x_src)
        ctx.save_for_backward(x_dst, x_src)
        with torch.autocast(x_dst.device.type, enabled=False):
            return edges.row_dots(x_dst, x_src)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        x_dst, x_src = ctx.saved_tensors
        edges, grad_dst, grad_src = ctx.edges, None, None
        grad = grad.to(x_dst.dtype)
        with torch.autocast(grad.device.type, enabled=False):
            if ctx.needs_input_grad[0]:
                grad_dst = torch.sparse.mm(edges.matrix(grad), x_src).to(ctx.dtypes[0])
            if ctx.needs_input_grad[1]:
                grad_src = torch.sparse.mm(edges.matrix(grad, transpose=True), x_dst).to(ctx.dtypes[1])
        return grad_dst, grad_src, None


def _sparse_dtype(*tensors: Tensor) -> tuple[Tensor, ...]:
    """``tensors`` in their common dtype, at least float32 (what the CPU's sparse kernels support)."""
    dtype = torch.float32
    for tensor in tensors:
        dtype = torch.promote_types(dtype, tensor.dtype)
    return tuple(tensor.to(dtype) for tensor in tensors)


def info_nce(anchor: Tensor, positive: Tensor, candidates: Tensor, temperature: float) -> Tensor:
    r"""Summed InfoNCE of each anchor against its positive among all ``candidates`` (cosine / temperature):
    :math:`-\sum_b \log \frac{\exp(s(a_b, p_b)/\tau)}{\sum_c \exp(s(a_b, c)/\tau)}`, via logsumexp.

    Shapes:
        anchor, positive: (B, D); candidates: (N, D) -> ().
    """
    anchor, positive, candidates = (F.normalize(t, dim=-1) for t in (anchor, positive, candidates))
    positive_logit = (anchor * positive).sum(-1) / temperature  # (B,)
    all_logits = anchor @ candidates.T / temperature  # (B, N)
    return (torch.logsumexp(all_logits, dim=1) - positive_logit).sum()


class FeatureBank(nn.Module):
    """Content features of every modality, with the mask of items that have a vector (from the given values).

    Frozen by default: non-persistent buffers (inputs reloaded from the feature store, not state to checkpoint).
    With ``trainable`` they are parameters initialised from the given values (MMRec's
    ``nn.Embedding.from_pretrained(..., freeze=False)``): the optimiser fine-tunes them and the checkpoint
    carries them; the given values stay beside them (non-persistent), so :meth:`reset_parameters`, which the
    owning model's ``reset_parameters`` calls, puts them back.

    Shapes:
        ``matrices()[m]``: (num_items, dims[m]) float32; ``valid()[m]``: (num_items,) bool.
    """

    def __init__(self, features: Mapping[str, Tensor], *, trainable: bool = False) -> None:
        super().__init__()
        self.names = list(features)
        self.dims = [matrix.shape[1] for matrix in features.values()]
        for i, matrix in enumerate(features.values()):
            if trainable:
                self.register_parameter(f"feature_{i}", nn.Parameter(matrix.detach().float().clone()))
                self.register_buffer(f"given_{i}", matrix.detach().float(), persistent=False)
            else:
                self.register_buffer(f"feature_{i}", matrix.detach().float(), persistent=False)
            self.register_buffer(f"valid_{i}", valid_rows(matrix, name=self.names[i]), persistent=False)

    def __len__(self) -> int:
        return len(self.names)

    def reset_parameters(self) -> None:
        """Trainable features back to the given values (frozen ones never change)."""
        with torch.no_grad():
            for i in range(len(self)):
                given = getattr(self, f"given_{i}", None)
                if given is not None:
                    getattr(self, f"feature_{i}").copy_(given)

    def matrices(self) -> list[Tensor]:
        return [getattr(self, f"feature_{i}") for i in range(len(self))]

    def valid(self) -> list[Tensor]:
        return [getattr(self, f"valid_{i}") for i in range(len(self))]


M = TypeVar("M", bound=nn.Module)


def deferred_init(build: Callable[[], M]) -> M:
    """``build()`` with its weights allocated but not initialised (built on the meta device, then given CPU
    storage, as ``torch.nn.utils.skip_init``): for a submodule that the owning model's ``reset_parameters``
    initialises, so that a model has one init site and building it draws no random numbers twice."""
    with torch.device("meta"):
        module = build()
    return module.to_empty(device="cpu")


def modules_of(modules: nn.ModuleList, kind: type[M]) -> list[M]:
    """The items of ``modules``, all of class ``kind``, typed as such (an ``nn.ModuleList`` yields plain
    ``nn.Module`` to a type checker)."""
    typed = [module for module in modules if isinstance(module, kind)]
    if len(typed) != len(modules):
        raise TypeError(f"expected {kind.__name__} modules only, got {[type(m).__name__ for m in modules]}")
    return typed


def projections(dims: Sequence[int], out_dim: int) -> nn.ModuleList:
    """One linear map per modality to a shared width (MMRec's ``image_trs`` / ``text_trs``), left uninitialised:
    the owning model's ``reset_parameters`` initialises them with :func:`reset_projections`."""
    return deferred_init(lambda: nn.ModuleList(nn.Linear(d, out_dim) for d in dims))


def reset_projections(layers: nn.ModuleList, init: str = "xavier") -> None:
    r"""(Re-)initialise :func:`projections`. ``init``: ``xavier`` draws the weights Xavier-normal (as BM3's
    reference code); ``torch_default`` keeps ``nn.Linear``'s own (Kaiming-uniform weights,
    :math:`\mathcal{U}(\pm 1/\sqrt{d})`), as MMRec's LATTICE and FREEDOM. Biases get ``nn.Linear``'s
    initialisation either way."""
    if init not in PROJECTION_INITS:
        raise ValueError(f"projection init must be one of {list(PROJECTION_INITS)}, got {init!r}")
    linears = modules_of(layers, nn.Linear)
    for layer in linears:
        layer.reset_parameters()
    if init == "xavier":  # after all of nn.Linear's draws: the random stream of rmm's earlier releases
        for layer in linears:
            nn.init.xavier_normal_(layer.weight)


class Fusion(nn.Module):
    """Maps a list of modality matrices, one row per item, to one ``(N, out_dim)`` content matrix."""

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__()
        self.out_dim = out_dim

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        raise NotImplementedError


class ConcatFusion(Fusion):
    """Concatenate raw modalities, then one linear map: VBPR's ``E f_i`` with ``f_i = [f_img; f_txt]``."""

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.dims = list(dims)
        self.proj = nn.Linear(sum(dims), out_dim)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        r""":math:`W [x_1; \dots; x_M] + b` as :math:`\sum_m W_m x_m + b` over W's column blocks: the same
        product without copying the modalities into one wide matrix first (a 4,480-wide copy of every row was a
        third of a VBPR step)."""
        blocks = self.proj.weight.split(self.dims, dim=1)
        out = F.linear(xs[0], blocks[0], self.proj.bias)
        for x, block in zip(xs[1:], blocks[1:], strict=True):
            out = out + F.linear(x, block)
        return out


class _ProjectedFusion(Fusion):
    """Base of fusions that first project every modality to ``out_dim``, then combine the projections."""

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.projs = nn.ModuleList(nn.Linear(d, out_dim) for d in dims)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        return self.combine(torch.stack([p(x) for p, x in zip(self.projs, xs, strict=True)], dim=1))  # (N, M, out_dim)

    def combine(self, h: Tensor) -> Tensor:
        """Shapes: h (N, M, out_dim) -> (N, out_dim)."""
        raise NotImplementedError


class MeanFusion(_ProjectedFusion):
    def combine(self, h: Tensor) -> Tensor:
        return h.mean(1)


class SumFusion(_ProjectedFusion):
    def combine(self, h: Tensor) -> Tensor:
        return h.sum(1)


class AttentionFusion(_ProjectedFusion):
    r"""Per-item softmax weights over modalities, :math:`\alpha_m \propto \exp(q^\top \tanh(W h_m + b))`."""

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.key = nn.Linear(out_dim, out_dim)
        self.query = nn.Linear(out_dim, 1, bias=False)

    def combine(self, h: Tensor) -> Tensor:
        weights = torch.softmax(self.query(torch.tanh(self.key(h))), dim=1)  # (N, M, 1)
        return (weights * h).sum(1)


class GatedFusion(_ProjectedFusion):
    r"""Element-wise sigmoid gates computed from all modalities together,
    :math:`\sum_m \sigma(G_m [h_1; \dots; h_M]) \odot h_m`, so one modality can switch another off."""

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.gate = nn.Linear(len(dims) * out_dim, len(dims) * out_dim)

    def combine(self, h: Tensor) -> Tensor:
        gates = torch.sigmoid(self.gate(h.flatten(1))).view_as(h)  # (N, M, out_dim)
        return (gates * h).sum(1)


_FUSION_CLASSES: dict[str, type[Fusion]] = {
    "concat": ConcatFusion,
    "mean": MeanFusion,
    "sum": SumFusion,
    "attention": AttentionFusion,
    "gated": GatedFusion,
}


def build_fusion(name: str, dims: Sequence[int], out_dim: int) -> Fusion:
    """The fusion module ``name`` for modalities of widths ``dims``, producing ``out_dim`` columns."""
    if name not in _FUSION_CLASSES:
        raise ValueError(f"Unknown fusion {name!r}. Available: {list(FUSIONS)}")
    if not dims:
        raise ValueError("fusion needs at least one modality, got none")
    return _FUSION_CLASSES[name](dims, out_dim)


def projected_bpr(users: Tensor, proj: nn.Linear, x: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    r""":func:`bpr_loss` of the scores :math:`\mathbf{e}_u^\top (W x_i + b)` against
    :math:`\mathbf{e}_u^\top (W x_j + b)` (FREEDOM's modality terms), through one projection of the gap
    :math:`x_i - x_j`: the score gap is :math:`\mathbf{e}_u^\top W (x_i - x_j)`, so a batch projects B rows
    instead of 2B (half the forward and weight-gradient work, the projection being most of such a step).

    The bias cancels in the gap; subtracting it from the projection keeps it in the graph with the exactly-zero
    gradient it gets from two projections, so DistributedDataParallel still sees every parameter used.

    Shapes:
        users: (B, d); x: (N, d_m); pos, neg: (B,) -> ().
    """
    gap = (users * (proj(row_difference(x, pos, neg)) - proj.bias)).sum(-1)  # (B,): score(i) - score(j)
    return F.softplus(-gap).mean()


def per_distinct(ids: Tensor, rows_of: Callable[[Tensor], Tensor]) -> Tensor:
    """``rows_of(ids)`` for a row-wise ``rows_of``, computed once per distinct id (a batch's items repeat), then
    spread back in ``ids``' order by ``index_select`` (its backward an ``index_add``, not a sorting
    ``index_put``): a batch's items projected or fused without the whole catalogue.

    Shapes:
        ids: (n,) int64; ``rows_of``: (m,) -> (m, *) -> (n, *).
    """
    distinct, inverse = torch.unique(ids, return_inverse=True)
    return rows_of(distinct).index_select(0, inverse)


def row_difference(x: Tensor, pos: Tensor, neg: Tensor) -> Tensor:
    """``x[pos] - x[neg]`` as one product with a sparse (B, N) matrix of +1/-1 entries, differentiable in ``x``:
    each output row reads its two rows once, without the two gathered (B, d_m) temporaries (~20% less time
    than gathering both on a 4,096-d Baby batch).

    Shapes:
        x: (N, d_m); pos, neg: (B,) -> (B, d_m).
    """
    rows = torch.arange(len(pos), device=x.device).repeat(2)
    signs = torch.ones(2 * len(pos), dtype=x.dtype, device=x.device)
    signs[len(pos):] = -1.0
    select = torch.sparse_coo_tensor(torch.stack([rows, torch.cat([pos, neg])]), signs, (len(pos), x.shape[0]),
                                     check_invariants=False).coalesce()  # pos == neg sums to an explicit 0
    return sparse_matmul(to_csr(select), x, to_csr(select.t()))


def low_rank_info_nce(anchor: Tensor, positive: Tensor, memberships: Tensor, latent: Tensor,
                      temperature: float) -> Tensor:
    r""":func:`info_nce` against the candidates ``memberships @ latent`` (rank H, e.g. LGMRec's hypergraph
    embeddings), without forming their (N, D) table: the cosine logits are
    :math:`\hat{a}_b^\top \hat{c}_n = (\hat{a}_b^\top L^\top)\, h_n / \lVert h_n L \rVert`, a (B, H) @ (H, N)
    product instead of (B, D) @ (D, N) (D / H times fewer multiply-adds, both ways), and the candidate norms come
    from the (H, H) Gram matrix :math:`L L^\top`.

    Shapes:
        anchor, positive: (B, D); memberships: (N, H); latent: (H, D) -> ().
    """
    anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    positive_logit = (anchor * positive).sum(-1) / temperature  # (B,)
    squared_norms = ((memberships @ (latent @ latent.T)) * memberships).sum(-1)  # (N,): ||h_n L||^2
    keys = memberships / squared_norms.clamp_min(0).sqrt().clamp_min(1e-12).unsqueeze(1)  # (N, H), F.normalize's eps
    queries = anchor @ latent.T / temperature  # (B, H)
    return (product_logsumexp(queries, keys) - positive_logit).sum()


def all_pairs_info_nce(anchor: Tensor, positive: Tensor, temperature: float) -> Tensor:
    r"""Mean InfoNCE of each row of ``anchor`` against the same row of ``positive`` among *all* rows of
    ``positive`` (cosine / temperature), :math:`\frac{1}{N}\sum_n \big(\log \sum_{c} e^{s(a_n, p_c)/\tau}
    - s(a_n, p_n)/\tau\big)` (MENTOR's perturbed-view loss over every user or every item), by blocks of rows:
    the (N, N) logits are never formed (a block at a time, remade in backward).

    Shapes:
        anchor, positive: (N, D) -> ().
    """
    anchor, positive = F.normalize(anchor, dim=-1), F.normalize(positive, dim=-1)
    positive_logit = (anchor * positive).sum(-1) / temperature  # (N,)
    return (product_logsumexp(anchor / temperature, positive) - positive_logit).mean()


def product_logsumexp(queries: Tensor, keys: Tensor, known: Tensor | None = None) -> Tensor:
    """Row-wise ``logsumexp(queries @ keys.T)`` without the (B, N) matrix (:class:`_ProductLogSumExp`), in at
    least float32 (bf16 inputs are promoted). ``known``: the values, when the caller already made them in its own
    pass over the same blocks (only the backward is then done here).

    Shapes:
        queries: (B, H); keys: (N, H); known: (B,) or None -> (B,).
    """
    dtype = torch.promote_types(torch.promote_types(queries.dtype, keys.dtype), torch.float32)
    return _ProductLogSumExp.apply(queries.to(dtype), keys.to(dtype), known)


class _ProductLogSumExp(torch.autograd.Function):
    """Row-wise ``logsumexp(queries @ keys.T)`` by blocks of rows, for few columns (H) and many rows (N) of keys.

    Autograd's version writes and re-reads the whole (B, N) logit matrix about fifteen times (product, max,
    subtraction, exp, sum; in backward the softmax, its product with the gradient and two matrix products); here
    each block of ``_BLOCK_ELEMENTS`` logits is made, used and dropped while it is in cache, and backward remakes it
    (an (rows, H) @ (H, N) product: cheap for small H) instead of keeping it. Both inputs in one dtype (at least
    float32), autocast off: the backward runs outside autocast, so both directions must agree on the dtype.
    """

    @staticmethod
    def forward(ctx: Any, queries: Tensor, keys: Tensor, known: Tensor | None) -> Tensor:
        if known is None:
            rows = block_rows(keys)
            with torch.autocast(queries.device.type, enabled=False):
                out = torch.cat([torch.logsumexp(queries[s:s + rows] @ keys.T, dim=1)
                                 for s in range(0, len(queries), rows)])
        else:
            out = known.to(queries.dtype, copy=True)
        ctx.save_for_backward(queries, keys, out)
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor, None]:
        queries, keys, out = ctx.saved_tensors
        grad_queries, grad_keys = torch.empty_like(queries), torch.zeros_like(keys)
        rows = block_rows(keys)
        for s in range(0, len(queries), rows):
            block = slice(s, s + rows)
            # softmax of the block's logits times the rows' gradients: d out_b / d logits_bn
            weights = (queries[block] @ keys.T).sub_(out[block, None]).exp_().mul_(grad[block, None])  # (rows, N)
            grad_queries[block] = weights @ keys
            grad_keys.addmm_(weights.T, queries[block])
        return grad_queries, grad_keys, None


#: Logits per block of :class:`_ProductLogSumExp` (4 MiB of float32: a block stays in a core's cache).
_BLOCK_ELEMENTS = 2**20


def block_rows(keys: Tensor) -> int:
    """Rows of a block of products with every row of ``keys`` that holds about ``_BLOCK_ELEMENTS`` values."""
    return max(1, _BLOCK_ELEMENTS // max(1, len(keys)))


class EdgePruning(nn.Module):
    r"""Degree-sensitive pruning of the user-item graph (FREEDOM, LayerGCN): an epoch keeps
    :math:`\max(1, \lfloor (1 - \text{dropout}) |E| \rfloor)` train edges, drawn without replacement with
    probability :math:`\propto 1/\sqrt{d_u d_i}` (train degrees) or uniformly, and
    :math:`D^{-1/2} A D^{-1/2}`-normalises them with the kept degrees.

    The draw takes the caller's CPU generator (``epoch_generator(seed, epoch)``), so every rank and device keeps
    the same edges and a resumed run replays them.

    Shapes:
        edge_users, edge_items, edge_weights: (E,); :meth:`adjacency`: sparse (U+I, U+I).
    """

    edge_users: Tensor
    edge_items: Tensor
    edge_weights: Tensor

    def __init__(self, graph: TrainGraph, dropout: float) -> None:
        super().__init__()
        self.num_users, self.num_items, self.dropout = graph.num_users, graph.num_items, dropout
        self.register_buffer("edge_users", graph.users, persistent=False)
        self.register_buffer("edge_items", graph.items, persistent=False)
        degree = graph.degrees()
        self.register_buffer("edge_weights", (degree[graph.users] * degree[graph.num_users + graph.items]).rsqrt(),
                             persistent=False)

    def kept_edges(self, generator: torch.Generator, *, uniform: bool = False) -> Tensor:
        """Indices of the kept train edges. Shapes: (keep,) int64, on the CPU."""
        keep = max(1, int(len(self.edge_weights) * (1.0 - self.dropout)))
        if uniform:
            return torch.randperm(len(self.edge_weights), generator=generator)[:keep]
        return torch.multinomial(self.edge_weights.cpu(), keep, replacement=False, generator=generator)

    def adjacency(self, generator: torch.Generator, *, uniform: bool = False) -> Tensor:
        """The normalised adjacency of the kept edges, on the buffers' device."""
        kept = self.kept_edges(generator, uniform=uniform)
        pruned = TrainGraph(self.num_users, self.num_items, self.edge_users.cpu()[kept], self.edge_items.cpu()[kept])
        return pruned.norm_adj().to(self.edge_weights.device)

