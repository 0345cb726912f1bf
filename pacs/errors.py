"""Exceptions of the archive core.

::

    ArchiveError
    ├── InvalidInstance        the bytes are not a storable DICOM instance (nothing stored)
    │   ├── InvalidUID         a required UID is missing or not a UID (PS3.5 9.1)
    │   ├── InstanceConflict   valid, but contradicts what the archive holds (nothing stored)
    │   │   └── ReplaceRefused  would change a stored instance or patient/study identity, and
    │   │                       its source may not (nothing stored)
    │   │   └── ForeignStudy   its study belongs to another facility than it is stored for
    │   ├── SOPClassMismatch   the data set is not the instance the request announced
    │   └── StudyMismatch      not of the study the request was addressed to (STOW-RS)
    ├── StorageUnavailable     the blob store failed or cannot be reached (nothing acknowledged)
    ├── IndexUnavailable       the SQL index failed or cannot be reached (nothing acknowledged)
    │   └── AuditUnavailable   an audit event could not be written (the request fails with it)
    ├── SchemaOutdated         the index schema is not at the migration head
    ├── InvalidAE            an AE registry entry that cannot be right
    ├── InvalidFacility        a facility name, AE title or sharing grant that cannot be right
    ├── QueryError             a search that cannot be run as asked (bad level, range, ...)
    ├── EgressRefused          a URL or address outgoing requests may not go to (webhooks)
    ├── UnsafeSecret           a secret file others may read, or one too short to be a key
    ├── TLSConfigError         a certificate, key or CA file that cannot be loaded
    ├── BackupError            a backup that cannot be made, read or restored (pacs.backup)
    └── DeidentificationError  an instance that cannot be exported de-identified (pacs.deid.errors)

Protocol boundaries (DIMSE handlers, later the HTTP API) translate these into status codes in
one place each; nothing below them knows about status codes.
"""

from __future__ import annotations


class ArchiveError(Exception):
    """Base of every error the archive core raises on purpose."""


class InvalidInstance(ArchiveError):
    """The received bytes cannot be stored: unparsable, truncated, or missing/invalid UIDs."""


class InvalidUID(InvalidInstance):
    """A required UID (SOP Class/Instance, Study, Series) is missing or malformed."""


class InstanceConflict(InvalidInstance):
    """A valid instance that contradicts the index (e.g. a series UID under two studies)."""


class ReplaceRefused(InstanceConflict):
    """A change the source is not permitted to make: new bytes for a stored SOP Instance UID,
    or a patient name, birth date or sex (or a study's accession number) other than the one
    stored. Only a source that may replace (an AE with the ``replace`` permission, an admin
    token) makes such a correction; nothing was stored.

    *keyword* names the attribute that would have changed; None for new bytes of an instance.
    """

    def __init__(self, message: str, keyword: str | None = None) -> None:
        super().__init__(message)
        self.keyword = keyword


class ForeignStudy(InstanceConflict):
    """An instance stored for one facility whose study belongs to another (nothing stored)."""


class SOPClassMismatch(InvalidInstance):
    """The data set's SOP Class/Instance UID differ from those the C-STORE request named."""


class StudyMismatch(InvalidInstance):
    """A STOW-RS request to /studies/{study} carried an instance of another study."""


class StorageUnavailable(ArchiveError):
    """The blob store could not complete an operation."""


class IndexUnavailable(ArchiveError):
    """The SQL index could not complete an operation."""


class AuditUnavailable(IndexUnavailable):
    """An audit event could not be written: the read or change it records must not proceed."""


class SchemaOutdated(ArchiveError):
    """The database schema is not at the head revision: run ``pacs db upgrade``."""


class QueryError(ArchiveError):
    """A search that cannot be run as asked: unknown attribute or level, bad range or number."""


class InvalidAE(ArchiveError):
    """An application entity registration with a bad AE title, host or port."""


class InvalidFacility(ArchiveError):
    """A facility name, facility AE title or sharing grant that cannot be right."""


class EgressRefused(ArchiveError):
    """The egress policy refuses a URL (its form) or an address its host resolves to."""


class UnsafeSecret(ArchiveError):
    """A secret file readable or writable by group or others, or too short to be a key."""


class TLSConfigError(ArchiveError):
    """A TLS certificate, private key or CA bundle that is missing or cannot be loaded."""


class BackupError(ArchiveError):
    """A backup that cannot be taken, is incomplete or damaged, or a restore refused."""
