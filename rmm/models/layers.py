"""Shared model maths, written once: BPR loss, L2 regulariser, LightGCN propagation and content fusion."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

def bpr_loss(pos_scores: Tensor, neg_scores: Tensor) -> Tensor:
    r"""Mean BPR loss :math:`-\ln \sigma(\hat{y}_{ui} - \hat{y}_{uj})`, via softplus so that large score gaps
    neither underflow to ``log(0)`` nor need MMRec's ``+1e-10`` fudge. Shapes: (B,), (B,) -> ()."""
    return F.softplus(neg_scores - pos_scores).mean()


def l2_reg(*embeddings: Tensor) -> Tensor:
    r""":math:`\frac{1}{2B}\sum \lVert e \rVert^2` over the batch's embeddings, as in LightGCN's reference code.

    Regularising only the rows a batch touches (instead of ``weight_decay`` on whole tables) keeps the
    penalty per interaction independent of the catalogue size. ``B`` is the first dimension of the first
    tensor.
    """
    total = sum(e.pow(2).sum() for e in embeddings)
    return total / (2 * embeddings[0].shape[0])


class _SymmetricSpMM(torch.autograd.Function):
    """``adj @ x`` whose backward reuses ``adj`` itself, valid because ``adj`` is symmetric.

    ``torch.sparse.mm``'s own backward transposes the sparse matrix every step; NOTES.md measured the
    symmetric shortcut ~4x faster per LightGCN epoch. ``adj`` is a constant (no gradient).
    """

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, adj: Tensor, x: Tensor) -> Tensor:
        ctx.adj = adj
        return torch.sparse.mm(adj, x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[None, Tensor]:
        return None, torch.sparse.mm(ctx.adj, grad)


def propagate(adj: Tensor, x: Tensor, num_layers: int) -> Tensor:
    r"""LightGCN propagation: the mean of layers :math:`E^{(l+1)} = \tilde{A} E^{(l)}`, :math:`l < L`.

    .. math:: E = \frac{1}{L+1} \sum_{l=0}^{L} \tilde{A}^l E^{(0)}

    Args:
        adj: symmetric normalised adjacency (see ``TrainGraph.norm_adj``); must be symmetric, because the
            backward pass multiplies by ``adj`` instead of its transpose.
        x: layer-0 embeddings.
        num_layers: L, the number of propagation steps.

    Shapes:
        adj: (N, N) sparse; x: (N, D) -> (N, D).
    """
    layers = [x]
    for _ in range(num_layers):
        layers.append(_SymmetricSpMM.apply(adj, layers[-1]))
    return torch.stack(layers).mean(0)


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
