"""The project's exception hierarchy.

One root, ``CollectorExtError``, with two families split by cause:

- ``DataError``: the data itself is wrong (malformed input, integrity failures). Never retried.
- ``DeliveryError``: a backend could not take or give data right now. Retried by the one retry owner.

``ConfigurationError`` stands beside them for settings that stop start-up. Every error carries a
``diagnostics()`` text the CLI prints; it names the setting, file, object or record concerned and never
contains key material.
"""

from __future__ import annotations


class CollectorExtError(Exception):
    """Root of every error raised by collector_ext."""

    def diagnostics(self) -> str:
        """A message for humans: what went wrong and, where known, what to do about it."""
        return str(self)


class ConfigurationError(CollectorExtError):
    """A setting is missing or invalid; ``setting`` names it (e.g. ``archive.retention_days``)."""

    def __init__(self, setting: str, problem: str) -> None:
        super().__init__(f"{setting}: {problem}")
        self.setting = setting
        self.problem = problem


class KeyFileError(ConfigurationError):
    """A key file cannot be read or does not hold an Ed25519 key."""


class DataError(CollectorExtError):
    """The data is wrong and retrying cannot help."""


class InvalidRequestError(DataError):
    """An OTLP request that cannot be accepted (malformed, not decodable)."""


class RequestTooLargeError(DataError):
    """An OTLP request over the configured size limit (also after decompression)."""


class IntegrityError(DataError):
    """An archive failed verification; ``report`` holds every finding."""


class MalformedObjectError(DataError):
    """An archive object does not follow the format in proto/FORMAT.md."""


class UnreadableObjectError(DataError):
    """An archive object cannot be read as one, for a reason tied to the object itself: it is not a
    regular file (a symbolic link, a FIFO, a device), it cannot be opened, it vanished after it was
    listed, or it changed while it was read. Retrying cannot help; the verifier reports it.

    The key comes from the archive, so the message shows it escaped (``repr``): a key carrying
    terminal control sequences must not reach a terminal raw.
    """

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"object {key!r} cannot be read: {reason}")
        self.key = key
        self.reason = reason


class ObjectTooLargeError(UnreadableObjectError):
    """An archive object is larger than the reader's limit; it was not read."""

    def __init__(self, key: str, size: int, limit: int, *, size_known: bool = True) -> None:
        # size_known=False: the store did not say how large the object is; ``size`` is how much of it
        # arrived before reading stopped.
        amount = f"{size} bytes" if size_known else f"at least {size} bytes"
        super().__init__(key, f"it is {amount}, more than the {limit} bytes an object may have")
        self.size = size
        self.limit = limit


class DeliveryError(CollectorExtError):
    """A backend could not take or give data now; the operation may be retried."""


class ArchiveUnavailableError(DeliveryError):
    """The archive (S3 or directory) refused or failed a read or write."""


class PermanentArchiveError(CollectorExtError):
    """The archive refused a write for a reason retrying cannot fix (access denied, no such bucket)."""


class CapacityExceededError(DeliveryError):
    """The sidecar holds as many unarchived records as it may; the client should retry later."""
