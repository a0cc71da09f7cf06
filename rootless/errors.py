"""One hierarchy for every error a user can cause: what was wrong, and what to do.

Library code raises these; only ``cli.py`` prints them and picks the exit code.
"""

from __future__ import annotations


class RootlessError(Exception):
    """An error with a message for the user and, where one helps, a hint."""

    #: docker's convention: 125 means the engine itself failed or was misused.
    exit_code = 125

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}; {self.hint}" if self.hint else self.message


class InvalidReference(RootlessError):
    """An image reference docker would refuse."""


class ManifestError(RootlessError):
    """A manifest or index that cannot be used: bad JSON, unknown media type, too large."""


class DigestError(RootlessError):
    """A digest that is malformed, or content whose digest or size is not the one expected."""


class RegistryError(RootlessError):
    """A registry refused or failed a request; the message reads as docker prints it.

    ``code`` is the registry's error code (``MANIFEST_UNKNOWN``...) where it sent one,
    ``status`` the HTTP status where there was a response.
    """

    def __init__(self, message: str, hint: str | None = None, code: str | None = None,
                 status: int | None = None) -> None:
        super().__init__(message, hint)
        self.code = code
        self.status = status


class RegistryUnreachable(RegistryError):
    """No HTTP answer at all: connection refused, DNS failure, TLS failure, timeout."""


class Unauthorized(RegistryError):
    """The registry wants credentials, or refused the ones given (UNAUTHORIZED)."""


class Denied(RegistryError):
    """The credentials are fine but do not allow this (DENIED)."""


class ManifestUnknown(RegistryError):
    """No manifest under that tag or digest (MANIFEST_UNKNOWN)."""


class BlobUnknown(RegistryError):
    """No blob with that digest in the repository (BLOB_UNKNOWN)."""


class NameUnknown(RegistryError):
    """No such repository (NAME_UNKNOWN)."""


class LayerError(RootlessError):
    """A layer tar that cannot be unpacked safely: corrupt, truncated or hostile."""


class ArchiveError(RootlessError):
    """An image archive (``docker save``, OCI layout) that is malformed, truncated, or whose
    content does not match its digests."""


class StoreError(RootlessError):
    """The image store is unusable, or a request to it cannot be met."""


class ImageNotFound(StoreError):
    """No image in the store has this name or id."""


class AmbiguousImageId(StoreError):
    """An id prefix that more than one stored image starts with."""
