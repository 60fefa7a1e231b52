"""Project exception types. Every one is also a `ValueError`, so callers can catch either."""


class RobustKDError(ValueError):
    """Base class for errors caused by user input: configs, data, shard sets."""


class ConfigError(RobustKDError):
    """An invalid config. The message lists every problem found, one per line."""

    def __init__(self, problems: list[str], source: str = "config"):
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source} has {len(self.problems)} problem(s):\n{lines}")


class ShardSetError(RobustKDError):
    """A shard set that is missing, incomplete, corrupted, or made by another teacher."""


class DatasetError(RobustKDError):
    """A data set folder that is missing or does not match the expected on-disk layout."""
