"""ItemKNN-content's hyperparameters: the keys of an ``itemknn_content`` model entry (the model:
:mod:`rmm.models.itemknn_content`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from rmm.validation import require_at_least

#: ``modality_merge`` values: average one graph per modality, or build one graph of the concatenated features.
MODALITY_MERGES = ("graph_mean", "feature_concat")


@dataclass(frozen=True)
class ItemKNNContentConfig:
    r"""ItemKNN-content's hyperparameters, after MMRec's ``ItemKNNCBF.yaml``.

    Attributes:
        knn_k: neighbours kept per item (MMRec: 10).
        shrink: added to the cosine's denominator, damping the similarity of low-norm rows (MMRec: 10).

    Protocol switches (``protocol: strict`` value first, then ``mmrec``'s):
        knn_self: ``False`` / ``True``: whether an item's own similarity
            :math:`\lVert x_i\rVert^2 / (\lVert x_i\rVert^2 + s)` competes for its top k. MMRec takes the top k
            of the full similarity row, diagonal included, so an item usually neighbours itself and a user's
            history items score their own self-similarity (masked at evaluation anyway) while leaving k - 1
            slots to other items; rmm keeps k *other* items, the ItemKNN of Ferrari Dacrema et al.
        modality_merge: ``graph_mean`` / ``feature_concat``: rmm builds one kNN graph per modality and averages
            them, so every modality weighs the same; MMRec concatenates the raw modalities (image, then text) and
            builds one graph, where the modality with the larger norms dominates the cosine. A concatenated graph
            is built in memory each run (never read from or written to the kNN cache).
    """

    knn_k: int = 10
    shrink: float = 10.0
    knn_self: bool = False
    modality_merge: str = "graph_mean"
    #: The defaults ``protocol: mmrec`` gives these fields (MMRec's ``itemknncbf.py`` and ``ItemKNNCBF.yaml``);
    #: explicit values win.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {
        "mmrec": {"knn_k": 10, "shrink": 10.0, "knn_self": True, "modality_merge": "feature_concat"}}

    def __post_init__(self) -> None:
        require_at_least(self, 1, "knn_k")
        require_at_least(self, 0, "shrink")
        if self.modality_merge not in MODALITY_MERGES:
            raise ValueError(f"modality_merge must be one of {list(MODALITY_MERGES)}, got {self.modality_merge!r}")
