"""Exceptions of de-identification.

::

    ArchiveError
    └── DeidentificationError      an instance that cannot be exported de-identified
        ├── UnreadableInstance     the bytes are not a DICOM instance we can parse and re-encode
        ├── BurnedInAnnotation     the pixels may show identifying text; refused unless forced
        └── InvalidProjectKey      the project key is too short to keep pseudonyms secret

Nothing is written for an instance that raises one of these: the caller (CLI, admin API)
reports the instance and goes on with the next.
"""

from __future__ import annotations

from pacs.errors import ArchiveError


class DeidentificationError(ArchiveError):
    """Base of every error raised while de-identifying."""


class UnreadableInstance(DeidentificationError):
    """Empty, truncated or unparsable input, or an instance without its identifying UIDs."""


class BurnedInAnnotation(DeidentificationError):
    """Burned-in annotation or recognizable features are (or may be) in the pixel data.

    PS3.15 E.1.1: the Basic Profile does not clean pixel data, so an instance whose pixels may
    carry a name or a face is refused unless the caller forces it (having looked).
    """


class InvalidProjectKey(DeidentificationError):
    """The project key that seeds pseudonyms, UIDs and date offsets is unusable."""
