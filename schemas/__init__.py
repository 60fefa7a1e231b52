"""Contracts between the precompute pipeline and the trainer.

`pipeline/` writes what these modules describe and `trainer/` reads it; neither imports the
other. The stored sample layout lives in `sample`, the shard-set manifest in `manifest`, and the
typed experiment configs in `config`.
"""

from schemas.errors import ConfigError, DatasetError, RobustKDError, ShardSetError

SCHEMA_VERSION = 3

__all__ = ["SCHEMA_VERSION", "ConfigError", "DatasetError", "RobustKDError", "ShardSetError"]
