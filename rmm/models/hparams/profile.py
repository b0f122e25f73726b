"""Profile matching's hyperparameters: the keys of a ``profile`` model entry (the model: :mod:`rmm.models.profile`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar


@dataclass(frozen=True)
class ProfileConfig:
    """Profile matching's one choice.

    Attributes:
        normalize_items: average unit-length item vectors (every history item counts equally) instead of the raw
            ones (an item with a large norm dominates the profile).

    MMRec has no such model, so ``protocol: mmrec`` changes nothing here (``protocol_defaults`` is empty).
    """

    normalize_items: bool = True
    #: No MMRec counterpart: both protocols use the defaults above.
    protocol_defaults: ClassVar[Mapping[str, Mapping[str, Any]]] = {}
