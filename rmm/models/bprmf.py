"""BPR-MF: matrix factorisation trained with Bayesian Personalized Ranking, the ID-only baseline."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from torch import Tensor, nn

from rmm.config import require_at_least
from rmm.data.graph import TrainGraph
from rmm.models.base import EmbeddingRecommender, register


@dataclass(frozen=True)
class BPRMFConfig:
    """Defaults of MMRec's ``BPR.yaml`` (``reg_weight`` from the middle of its grid)."""

    embedding_dim: int = 64
    reg_weight: float = 1e-4

    def __post_init__(self) -> None:
        require_at_least(self, 1, "embedding_dim")
        require_at_least(self, 0, "reg_weight")


@register("bprmf")
class BPRMF(EmbeddingRecommender):
    r"""BPR-MF (Rendle et al., `BPR: Bayesian Personalized Ranking from Implicit Feedback
    <https://arxiv.org/abs/1205.2618>`_, UAI 2009).

    .. math:: \hat{y}_{ui} = \gamma_u^\top \gamma_i, \qquad
              \mathcal{L} = -\sum_{(u,i,j)} \ln \sigma(\hat{y}_{ui} - \hat{y}_{uj}) + \lambda \lVert\Theta\rVert^2

    Shapes:
        user_embedding: (num_users, embedding_dim); item_embedding: (num_items, embedding_dim).
    """

    config_class = BPRMFConfig

    def __init__(self, graph: TrainGraph, features: Mapping[str, Tensor], cfg: BPRMFConfig, *,
                 fusion: str = "concat") -> None:
        super().__init__(graph, features, cfg, fusion=fusion)
        self.user_embedding = nn.Embedding(self.num_users, cfg.embedding_dim)
        self.item_embedding = nn.Embedding(self.num_items, cfg.embedding_dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.xavier_uniform_(self.user_embedding.weight)
        nn.init.xavier_uniform_(self.item_embedding.weight)

    def embeddings(self) -> tuple[Tensor, Tensor]:
        return self.user_embedding.weight, self.item_embedding.weight
