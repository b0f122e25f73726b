"""Typed, frozen run configuration loaded from YAML.

Every YAML section maps 1:1 onto a frozen dataclass so that a typo fails at load time, naming the key, its
section and the valid keys, instead of silently falling back to a default hours into a cluster job. Model
hyperparameters live in each model's own dataclass (looked up in the model registry), so a ``model`` entry
accepts exactly the keys of the model it names; likewise an extractor entry accepts exactly the keys of its kind.

One module per job: :mod:`~rmm.config.coerce` (YAML values -> typed dataclasses), :mod:`~rmm.config.protocol`
(``protocol:`` defaults), the sections (:mod:`~rmm.config.dataset`, :mod:`~rmm.config.extract`,
:mod:`~rmm.config.model`, :mod:`~rmm.config.train`, :mod:`~rmm.config.schema` for the rest and the whole
:class:`Config`), :mod:`~rmm.config.load` (file, overrides, validation) and :mod:`~rmm.config.snapshot`. Nothing
here imports torch: a model entry is checked against its line in the torch-free :mod:`rmm.models.registry` and its
dataclass in :mod:`rmm.models.hparams`, never against the model class.
"""

from rmm.config.coerce import build_dataclass, dotted_fields, set_dotted, to_plain
from rmm.config.dataset import SOURCES, SPLITS, DatasetConfig, SyntheticConfig
from rmm.config.extract import (
    EXTRACTOR_CONFIGS,
    CLIPImageConfig,
    CLIPTextConfig,
    EncoderConfig,
    ExtractorConfig,
    FeaturesConfig,
    ImageExtractorConfig,
    ImageStatsConfig,
    LVLMDescribeConfig,
    LVLMEmbedConfig,
    SentenceConfig,
    TorchvisionConfig,
    ViTConfig,
)
from rmm.config.load import apply_overrides, config_from_dict, load_config, tuned_models
from rmm.config.model import ModelConfig, build_model_config, model_to_dict
from rmm.config.protocol import PROTOCOLS, protocol_defaults
from rmm.config.schema import (
    DATA_DIR,
    FEATURES_DIR,
    STAGES,
    Config,
    OutputConfig,
    RayConfig,
    TuneConfig,
    check_fits,
)
from rmm.config.snapshot import save_snapshot
from rmm.config.train import (
    METRIC_NAMES,
    MMREC_TRAIN,
    NEGATIVES,
    SEEDS_WITHOUT_TUNE,
    EvalConfig,
    FaultToleranceConfig,
    ScalingConfig,
    TrainConfig,
)
from rmm.errors import ConfigError

__all__ = [
    "CLIPImageConfig", "CLIPTextConfig", "Config", "ConfigError", "DATA_DIR", "DatasetConfig", "EXTRACTOR_CONFIGS",
    "EncoderConfig", "EvalConfig", "ExtractorConfig", "FEATURES_DIR", "FaultToleranceConfig", "FeaturesConfig",
    "ImageExtractorConfig", "ImageStatsConfig", "LVLMDescribeConfig", "LVLMEmbedConfig", "METRIC_NAMES", "MMREC_TRAIN",
    "ModelConfig", "NEGATIVES", "OutputConfig", "PROTOCOLS", "RayConfig", "SEEDS_WITHOUT_TUNE", "SOURCES", "SPLITS",
    "STAGES", "ScalingConfig", "SentenceConfig", "SyntheticConfig", "TorchvisionConfig", "TrainConfig", "TuneConfig",
    "ViTConfig", "apply_overrides", "build_dataclass", "build_model_config", "check_fits", "config_from_dict",
    "dotted_fields", "load_config", "model_to_dict", "protocol_defaults", "save_snapshot", "set_dotted", "to_plain",
    "tuned_models",
]
