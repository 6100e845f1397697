"""Config schema, YAML presets and the loader that validates them (the bottom of the house).

errors  UserError, ConfigError: the one-line errors users see (every package may import them).
schema  Every key: typed, frozen dataclasses, a docstring under each field.
loader  YAML preset + key=value overrides -> a validated Config.

Imports nothing of Meshtron's outside configs/; every other package may import it."""

from meshtron.configs.errors import ConfigError, UserError
from meshtron.configs.loader import (build_config, config_from_dict, config_to_dict, load_config,
                                     parse_override, preset_names)
from meshtron.configs.schema import (CheckpointConfig, Config, DataConfig, ModelConfig, ParallelConfig,
                                     TrainConfig)

__all__ = ["CheckpointConfig", "Config", "ConfigError", "DataConfig", "ModelConfig", "ParallelConfig",
           "TrainConfig", "UserError", "build_config", "config_from_dict", "config_to_dict", "load_config", "parse_override",
           "preset_names"]
