"""The small exception tree every module raises from.

Callers catch `EdgeMatteError` at supervision boundaries and the specific subclass where they
can act on it; messages name the offending key, file or value so an operator can fix it.
"""


class EdgeMatteError(Exception):
    """Base class of every error edge-matte raises on purpose."""


class ConfigError(EdgeMatteError):
    """A config file, patch or calibration profile is invalid; nothing was applied.

    `problems` lists each problem on its own line (what `check-config` and a refused start
    print); the message joins them.
    """

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems = problems if problems is not None else [message]


class CheckpointError(EdgeMatteError):
    """A weights file is missing, corrupt, unsafe or does not fit the architecture."""


class MediaError(EdgeMatteError):
    """An image, video or plate file cannot be read or is not acceptable."""


class SourceError(EdgeMatteError):
    """The frame source failed (device gone, stream broken); retrying may help."""


class SourceTimeout(SourceError):
    """No frame arrived within the timeout; the source may still recover."""


class SourceEnded(SourceError):
    """The source reached its end (a file without `loop`)."""


class EngineError(EdgeMatteError):
    """A matting engine failed to build or to run; the caller may fall back."""


class StorageError(EdgeMatteError):
    """A file could not be written; the previous version is left intact."""
