"""Shared model maths, written once: BPR and auxiliary losses, regularisers, sparse propagation, frozen feature
banks and content fusion."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rmm.data.graph import valid_rows


def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    r"""Mean BPR loss :math:`-\ln \sigma(\hat{y}_{ui} - \hat{y}_{uj})`, via softplus so that large score gaps
    neither underflow to ``log(0)`` nor need MMRec's ``+1e-10`` fudge. Shapes: (B,), (B,) -> ()."""
    return F.softplus(neg_scores - pos_scores).mean()


#: ``reg_norm`` values of the models' configs: how :func:`l2_reg` measures the batch's embeddings.
REG_NORMS = ("squared", "frobenius")


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
        return sum(e.pow(2).sum() for e in embeddings) / (2 * embeddings[0].shape[0])
    if norm == "frobenius":
        return sum(torch.linalg.vector_norm(e) for e in embeddings) / embeddings[0].shape[0]
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
    def forward(ctx: torch.autograd.function.FunctionCtx, adj: Tensor, x: Tensor, adj_t: Tensor) -> Tensor:
        ctx.adj_t, ctx.x_dtype = adj_t, x.dtype
        with torch.autocast(x.device.type, enabled=False):
            return torch.sparse.mm(adj, x.to(adj.dtype))

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[None, Tensor, None]:
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
    layers = [x]
    for _ in range(num_layers):
        layers.append(sparse_matmul(adj, layers[-1], adj_t))
    return torch.stack(layers).mean(0)


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
    carries them.

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
            else:
                self.register_buffer(f"feature_{i}", matrix.detach().float(), persistent=False)
            self.register_buffer(f"valid_{i}", valid_rows(matrix, name=self.names[i]), persistent=False)

    def __len__(self) -> int:
        return len(self.names)

    def matrices(self) -> list[Tensor]:
        return [getattr(self, f"feature_{i}") for i in range(len(self))]

    def valid(self) -> list[Tensor]:
        return [getattr(self, f"valid_{i}") for i in range(len(self))]


#: ``init`` values of :func:`projections`.
PROJECTION_INITS = ("xavier", "torch_default")


def projections(dims: Sequence[int], out_dim: int, *, init: str = "xavier") -> nn.ModuleList:
    r"""One linear map per modality to a shared width (MMRec's ``image_trs`` / ``text_trs``).

    ``init``: ``xavier`` draws the weights Xavier-normal (as BM3's reference code); ``torch_default`` keeps
    ``nn.Linear``'s own (Kaiming-uniform weights, :math:`\mathcal{U}(\pm 1/\sqrt{d})`), as MMRec's LATTICE and
    FREEDOM. Biases keep ``nn.Linear``'s initialisation either way.
    """
    if init not in PROJECTION_INITS:
        raise ValueError(f"projection init must be one of {list(PROJECTION_INITS)}, got {init!r}")
    layers = nn.ModuleList(nn.Linear(d, out_dim) for d in dims)
    if init == "xavier":
        for layer in layers:
            nn.init.xavier_normal_(layer.weight)
    return layers


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
        self.proj = nn.Linear(sum(dims), out_dim)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        return self.proj(torch.cat(list(xs), dim=-1))


class _ProjectedFusion(Fusion):
    """Base of fusions that first project every modality to ``out_dim``, then combine the projections."""

    def __init__(self, dims: Sequence[int], out_dim: int) -> None:
        super().__init__(dims, out_dim)
        self.projs = nn.ModuleList(nn.Linear(d, out_dim) for d in dims)

    def forward(self, xs: Sequence[Tensor]) -> Tensor:
        return self.combine(torch.stack([p(x) for p, x in zip(self.projs, xs)], dim=1))  # (N, M, out_dim)

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
FUSIONS = tuple(_FUSION_CLASSES)


def build_fusion(name: str, dims: Sequence[int], out_dim: int) -> Fusion:
    """The fusion module ``name`` for modalities of widths ``dims``, producing ``out_dim`` columns."""
    if name not in _FUSION_CLASSES:
        raise ValueError(f"Unknown fusion {name!r}. Available: {list(FUSIONS)}")
    if not dims:
        raise ValueError("fusion needs at least one modality, got none")
    return _FUSION_CLASSES[name](dims, out_dim)
