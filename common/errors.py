"""Errors that fastprune raises for bad input. Each message names the bad value and what would be valid."""


class FastpruneError(Exception):
    """Base class of every error fastprune raises on purpose."""


class ConfigError(FastpruneError, ValueError):
    """A parameter is outside its valid range or inconsistent with another."""


class UnsupportedArchitectureError(FastpruneError, ValueError):
    """The model is not one of the supported families."""


class ModelTaskMismatchError(FastpruneError, ValueError):
    """The model is not fine-tuned for the task (missing head, wrong label count, tokenizer mismatch)."""


class DataError(FastpruneError, ValueError):
    """A dataset is missing, empty, malformed or lacks the needed columns."""


class StorageError(FastpruneError, OSError):
    """Object storage is unreachable, refuses the credentials, or holds a corrupted artifact."""


class IntegrityError(StorageError):
    """An artifact does not match its manifest (checksum or size mismatch, missing file)."""
