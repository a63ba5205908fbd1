"""Project exceptions.

Every error a user can cause (a bad config, missing or corrupt data, a checkpoint that does not fit) is
raised as one of these, with a message that says what is wrong and how to fix it. They subclass
``ValueError`` so that callers who only know the standard library still catch them sensibly.
"""


class MstError(ValueError):
    """Base class of every error ``mstlib`` raises on purpose."""


class ConfigError(MstError):
    """An unknown, missing or contradictory configuration setting."""


class DataError(MstError):
    """Missing, corrupt or checksum-failing data (corpora, token files, evaluation sets)."""


class CheckpointError(MstError):
    """A checkpoint that is missing, corrupt or does not match the run's configuration."""


class TrainingError(MstError):
    """Training cannot continue (for example a NaN or infinite loss)."""


class RunLockedError(MstError):
    """Another process is training the same run (it holds the run's lock)."""


class CorruptRunError(MstError):
    """A stored run whose files exist but cannot be read (truncated JSON, an invalid config)."""


class CorruptRunWarning(UserWarning):
    """A corrupt stored run was skipped while listing runs (:meth:`mstlib.results.RunStore.find`)."""
