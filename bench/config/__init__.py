"""The configuration: the schema of every key and which of them change results or depart from a
paper (:mod:`.schema`, :mod:`.keys`), composing it (:mod:`.compose`), the one validation pass
(:mod:`.checks`), the recipe a run is compared with (:mod:`.recipe`) and the configs the protocols
derive from one (:mod:`.plans`: cross-validation folds, the two-level classifier's levels).
"""

from bench import CONF_DIR
from bench.config.compose import (compose_config, default_experiment_name, protocol_keys, register_configs,
                                  result_keys, run_identity)
from bench.config.keys import PATH_KEYS, expand_user_paths
from bench.config.schema import (CLASS_WEIGHTS, DATA_KINDS, DETECTION_KINDS, IMAGENET_MEAN, IMAGENET_STD,
                                 INTERPOLATIONS, LOGGERS, MAX_IMAGE_SIZE, SAMPLERS, SELECT_BY, SPLIT_MODES,
                                 STORE_MODES, STAIN_METHODS, AugmentConfig, BenchConfig, CvConfig, DataConfig, LoggerConfig,
                                 ModelConfig, PathsConfig, RecipeConfig, ReferralConfig, SvmConfig, TrainerConfig,
                                 TwoLevelConfig)

__all__ = [
    "compose_config", "register_configs", "run_identity", "result_keys", "protocol_keys", "default_experiment_name",
    "expand_user_paths", "PATH_KEYS", "CONF_DIR",
    "BenchConfig", "DataConfig", "AugmentConfig", "ModelConfig", "TrainerConfig", "RecipeConfig", "LoggerConfig",
    "PathsConfig", "CvConfig", "TwoLevelConfig", "SvmConfig", "ReferralConfig", "IMAGENET_MEAN", "IMAGENET_STD",
    "DATA_KINDS", "DETECTION_KINDS", "SPLIT_MODES", "STORE_MODES", "STAIN_METHODS", "INTERPOLATIONS", "SELECT_BY", "CLASS_WEIGHTS",
    "SAMPLERS", "LOGGERS", "MAX_IMAGE_SIZE",
]
