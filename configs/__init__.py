"""Config schema, YAML presets and the loader that validates them."""

from meshtron.configs.loader import (ConfigError, UserError, build_config, config_from_dict, config_to_dict, load_config,
                                     parse_override, preset_names)
from meshtron.configs.schema import (CheckpointConfig, Config, DataConfig, ModelConfig, ParallelConfig,
                                     TrainConfig)

__all__ = ["CheckpointConfig", "Config", "ConfigError", "DataConfig", "ModelConfig", "ParallelConfig",
           "TrainConfig", "UserError", "build_config", "config_from_dict", "config_to_dict", "load_config", "parse_override",
           "preset_names"]
