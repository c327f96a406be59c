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


class DeliveryError(CollectorExtError):
    """A backend could not take or give data now; the operation may be retried."""


class ArchiveUnavailableError(DeliveryError):
    """The archive (S3 or directory) refused or failed a read or write."""


class PermanentArchiveError(CollectorExtError):
    """The archive refused a write for a reason retrying cannot fix (access denied, no such bucket)."""


class CapacityExceededError(DeliveryError):
    """The sidecar holds as many unarchived records as it may; the client should retry later."""
