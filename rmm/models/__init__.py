"""Model registry: a new model is one file plus one import line here.

Importing this package imports torch but never ray, so models run in a plain Python process.
"""

from __future__ import annotations

from rmm.models.base import MODELS, Recommender, get_model_class, register

# One line per model file: importing it registers the model under its lowercase name.
from rmm.models import bm3  # noqa: E402,F401
from rmm.models import bprmf  # noqa: E402,F401
from rmm.models import freedom  # noqa: E402,F401
from rmm.models import grcn  # noqa: E402,F401
from rmm.models import itemknn_content  # noqa: E402,F401
from rmm.models import lattice  # noqa: E402,F401
from rmm.models import lgmrec  # noqa: E402,F401
from rmm.models import lightgcn  # noqa: E402,F401
from rmm.models import mmgcn  # noqa: E402,F401
from rmm.models import profile  # noqa: E402,F401
from rmm.models import vbpr  # noqa: E402,F401

__all__ = ["MODELS", "Recommender", "get_model_class", "register"]
