"""MVGAE's hyperparameters: the keys of a ``mvgae`` model entry (the model: :mod:`rmm.models.mvgae`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.models.hparams.base import EmbeddingConfig
from rmm.validation import require_at_least, require_choice

#: ``negatives`` values: each positive against the batch's hardest negative for its user, or its own negative.
NEGATIVES = ("batch_hardest", "paired")
#: ``loss_item_rows`` values: which row of the (U+I, d) node table the training loss reads for item i.
LOSS_ITEM_ROWS = ("items", "raw_ids")


@dataclass(frozen=True)
class MVGAEConfig(EmbeddingConfig):
    r"""Hyperparameters of :class:`~rmm.models.mvgae.MVGAE`.

    Defaults are MMRec's (``MVGAE.yaml`` and the constants of its ``mvgae.py``, the authors' code).

    Attributes:
        embedding_dim: width d of the latent Gaussians (mean and log-variance) and of the encoder layers
            (MMRec ``embedding_size`` 64); also the width of the collaborative expert's item ID input.
        latent_dim: width every expert first projects its item input to, also its user-preference width
            (MMRec's hard-coded ``dim_latent=128``).
        num_layers: hidden graph convolutions of each encoder before its mean and log-variance heads
            (MMRec ``n_layers`` 1).
        beta: weight :math:`\beta` of the KL terms; MMRec searches ``[0.01, 0.1, 1]`` (and the learning rate
            over ``[1e-4, 1e-3, 1e-2, 0.1]``); 0.1 is the middle of that grid.
        dropout: dropout rate after every graph convolution, while training (MMRec's hard-coded 0.1).
        noise_scale: factor of the reparameterisation noise, :math:`z = \mu + s\,\epsilon\,\sigma` (the authors'
            code and MMRec: 0.1; the paper's plain reparameterisation is 1).
        negatives: what each positive is ranked against. ``batch_hardest`` (both protocols): the authors' decoder,
            the highest-scoring of *all* the batch's sampled negatives for that user. ``paired``: its own sampled
            negative, as BPR. On a small catalogue the hardest of a batch's negatives is often an item of the
            user's taste (or a positive), and the loss then fights the ranking (on the 33-item planted data of
            the zoo test a 10-epoch fit ranks no better than chance with it, recall@10 0.93 with ``paired``).
        train_embeddings: whether the user-preference tables of every expert and the collaborative expert's
            item input are learned. ``strict`` True: the paper learns them. ``mmrec`` False: MMRec keeps them
            as plain tensors outside ``model.parameters()``, fixed at their random initial values.
        loss_item_rows: which node row the training loss reads for item i. ``strict`` ``items``: row
            ``num_users + i``, the item's own node (as scoring does). ``mmrec`` ``raw_ids``: row ``i``, MMRec's
            indexing of the node table with the raw item id (a *user's* row when i < num_users), kept only to
            reproduce MMRec; scoring reads the item nodes in both.
        sigmoid_latents: whether the decoder and the scores read :math:`\sigma(z)` instead of the latents z.
            ``strict`` False: the paper's inner-product decoder of the latents. ``mmrec`` True: the authors'
            "amazon" branch (a regulariser for sparse data, they say; MMRec hard-codes it). With d = 64 the squashed
            dot products start near d/4 = 16, where :math:`\sigma(\cdot)` of both the positive and the negative
            score is 1 - 1e-7: the ranking term then gives (almost) no gradient and only the KL terms train.
        reg_norm: unused: MVGAE puts no penalty on the embeddings (the KL terms regularise it).
        protocol_defaults: the defaults ``protocol: mmrec`` gives these fields; explicit values win. Not a
            config key.
    """

    embedding_dim: int = 64
    latent_dim: int = 128
    num_layers: int = 1
    beta: float = 0.1
    dropout: float = 0.1
    noise_scale: float = 0.1
    train_embeddings: bool = True
    loss_item_rows: str = "items"
    sigmoid_latents: bool = False
    negatives: str = "batch_hardest"
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"train_embeddings": False, "loss_item_rows": "raw_ids", "sigmoid_latents": True, "embedding_dim": 64,
                  "latent_dim": 128, "num_layers": 1, "dropout": 0.1, "noise_scale": 0.1},
    }

    def __post_init__(self) -> None:
        super().__post_init__()
        require_at_least(self, 1, "embedding_dim", "latent_dim", "num_layers")
        require_at_least(self, 0, "beta", "noise_scale")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        require_choice(self, "loss_item_rows", LOSS_ITEM_ROWS)
        require_choice(self, "negatives", NEGATIVES)
