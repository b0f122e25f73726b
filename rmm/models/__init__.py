"""The recommenders: one file per model, registered by name.

A new model is three pieces: its class in ``rmm/models/<name>.py`` decorated ``@register("<name>")``, its
hyperparameter dataclass in ``rmm/models/hparams/<name>.py``, and one line in :data:`rmm.models.registry.MODELS`
naming that dataclass and the inputs the model takes. Importing this package (or the registry) imports neither
torch nor any model: :func:`get_model_class` imports a model's module when it is first asked for, so loading a
config stays light and a plain Python process never imports ray.
"""

from __future__ import annotations

from rmm.models.registry import MODELS, ModelSpec, get_model_class, model_spec, register

__all__ = ["MODELS", "ModelSpec", "get_model_class", "model_spec", "register"]
