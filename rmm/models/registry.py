"""The model registry: one line per model, readable without importing torch.

A model is its class in ``rmm/models/<name>.py`` (decorated ``@register("<name>")``), its hyperparameter dataclass
in ``rmm/models/hparams/<name>.py`` and one :class:`ModelSpec` line in :data:`MODELS` naming that dataclass and
the inputs the model takes. Loading a config validates a model entry against its line alone, so it imports neither
torch nor the model classes; :func:`get_model_class` imports a model's module the first time it is asked for.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from rmm.errors import ConfigError, UnknownNameError
from rmm.models.hparams.base import FUSIONS
from rmm.models.hparams.bm3 import BM3Config
from rmm.models.hparams.bprmf import BPRMFConfig
from rmm.models.hparams.cohesion import COHESIONConfig
from rmm.models.hparams.damrs import DAMRSConfig
from rmm.models.hparams.dragon import DRAGONConfig
from rmm.models.hparams.dualgnn import DualGNNConfig
from rmm.models.hparams.freedom import FREEDOMConfig
from rmm.models.hparams.grcn import GRCNConfig
from rmm.models.hparams.itemknn_content import ItemKNNContentConfig
from rmm.models.hparams.lattice import LATTICEConfig
from rmm.models.hparams.layergcn import LayerGCNConfig
from rmm.models.hparams.lgmrec import LGMRecConfig
from rmm.models.hparams.lightgcn import LightGCNConfig
from rmm.models.hparams.mentor import MENTORConfig
from rmm.models.hparams.mgcn import MGCNConfig
from rmm.models.hparams.mmgcf import MMGCFConfig
from rmm.models.hparams.mmgcn import MMGCNConfig
from rmm.models.hparams.mvgae import MVGAEConfig
from rmm.models.hparams.pgl import PGLConfig
from rmm.models.hparams.profile import ProfileConfig
from rmm.models.hparams.selfcf import SelfCFConfig
from rmm.models.hparams.slmrec import SLMRecConfig
from rmm.models.hparams.smore import SMOREConfig
from rmm.models.hparams.vbpr import VBPRConfig

if TYPE_CHECKING:
    from rmm.models.base import Recommender

#: ``ModelConfig.fusion``'s default: what a model that fuses nothing (``fusions = ()``) is given.
DEFAULT_FUSION = "concat"


@dataclass(frozen=True)
class ModelSpec:
    """What the config loader and the sweep need to know of a model, without its class.

    Attributes:
        name: the registry key, also the model's module ``rmm.models.<name>`` (lowercase, as ``freedom``).
        config_class: the frozen dataclass of its hyperparameters (the keys of its ``model:`` entry).
        uses_features: whether it reads content features (False: ID-only; features given to it are an error).
        fusions: the fusion strategies it accepts when given several features; empty for ID-only models and
            for models that build one branch per modality (they take any number of modalities and no choice).
    """

    name: str
    config_class: type
    uses_features: bool = False
    fusions: tuple[str, ...] = ()

    @property
    def module(self) -> str:
        """The module whose ``@register(name)`` class implements the model."""
        return f"{__package__}.{self.name}"

    def check_inputs(self, features: Sequence[str], fusion: str) -> None:
        """Raise ConfigError (a user-facing message) when the features/fusion choice cannot work."""
        if self.uses_features and not features:
            raise ConfigError(f"{self.name} needs content features (model.features), got none; "
                              f"run `rmm extract` and list feature names")
        if not self.uses_features and features:
            raise ConfigError(f"{self.name} is ID-only and takes no features, got {list(features)}")
        if self.uses_features and len(features) > 1:
            if not self.fusions and fusion != DEFAULT_FUSION:
                raise ConfigError(f"{self.name} builds one branch per modality and fuses nothing, got fusion "
                                  f"{fusion!r}; leave model.fusion unset")
            if self.fusions and fusion not in self.fusions:
                raise ConfigError(f"{self.name} fusion must be one of {list(self.fusions)}, got {fusion!r}")


def registry_table(*specs: ModelSpec) -> dict[str, ModelSpec]:
    """``name -> spec`` of ``specs``; a name given twice raises."""
    table: dict[str, ModelSpec] = {}
    for spec in specs:
        if spec.name in table:
            raise KeyError(f"Duplicate model name {spec.name!r} in the registry")
        table[spec.name] = spec
    return table


#: Every model, by name: one line each.
MODELS: Mapping[str, ModelSpec] = registry_table(
    ModelSpec("bm3", BM3Config, uses_features=True),
    ModelSpec("bprmf", BPRMFConfig),
    ModelSpec("cohesion", COHESIONConfig, uses_features=True),
    ModelSpec("damrs", DAMRSConfig, uses_features=True),
    ModelSpec("dragon", DRAGONConfig, uses_features=True),
    ModelSpec("dualgnn", DualGNNConfig, uses_features=True),
    ModelSpec("freedom", FREEDOMConfig, uses_features=True),
    ModelSpec("grcn", GRCNConfig, uses_features=True),
    ModelSpec("itemknn_content", ItemKNNContentConfig, uses_features=True),
    ModelSpec("lattice", LATTICEConfig, uses_features=True),
    ModelSpec("layergcn", LayerGCNConfig),
    ModelSpec("lgmrec", LGMRecConfig, uses_features=True),
    ModelSpec("lightgcn", LightGCNConfig),
    ModelSpec("mentor", MENTORConfig, uses_features=True),
    ModelSpec("mgcn", MGCNConfig, uses_features=True),
    ModelSpec("mmgcf", MMGCFConfig, uses_features=True),
    ModelSpec("mmgcn", MMGCNConfig, uses_features=True),
    ModelSpec("mvgae", MVGAEConfig, uses_features=True),
    ModelSpec("pgl", PGLConfig, uses_features=True),
    ModelSpec("profile", ProfileConfig, uses_features=True),
    ModelSpec("selfcf", SelfCFConfig),
    ModelSpec("slmrec", SLMRecConfig, uses_features=True),
    ModelSpec("smore", SMOREConfig, uses_features=True),
    ModelSpec("vbpr", VBPRConfig, uses_features=True, fusions=FUSIONS),
)

#: The classes registered so far (a model's module registers its class when first imported).
_CLASSES: dict[str, type[Recommender[Any]]] = {}

#: A model class: ``register`` returns it unchanged.
R = TypeVar("R", bound="type[Recommender[Any]]")


def model_spec(name: str) -> ModelSpec:
    """The registry line of model ``name``; an unknown name raises, listing the known ones."""
    try:
        return MODELS[name]
    except KeyError:
        raise UnknownNameError(f"Unknown model {name!r}. Available: {sorted(MODELS)}") from None


def register(name: str) -> Callable[[R], R]:
    """Class decorator binding a model class to its registry line ``MODELS[name]`` (as ``cls.spec``); a name
    without a line, or a second class for the same name, raises."""
    spec = model_spec(name)

    def wrap(cls: R) -> R:
        # The same class again is a re-import of its module (importlib.reload), not a second model.
        if name in _CLASSES and _CLASSES[name].__qualname__ != cls.__qualname__:
            raise KeyError(f"Duplicate model name {name!r}: already registered by {_CLASSES[name].__name__}")
        cls.spec = spec
        _CLASSES[name] = cls
        return cls

    return wrap


def get_model_class(name: str) -> type[Recommender[Any]]:
    """The class of model ``name``, importing its module (and torch) on first use."""
    spec = model_spec(name)
    if name not in _CLASSES:
        importlib.import_module(spec.module)
    if name not in _CLASSES:
        raise KeyError(f"{spec.module} registers no class under {name!r}: decorate it @register({name!r})")
    return _CLASSES[name]
