"""Deterministic UID replacement (action U, PS3.15 E.1.1) that keeps references consistent.

Every UID that names an instance of this archive's world (study, series, SOP instance, frame of
reference, tracking, ...) is replaced, wherever it occurs, by ``2.25.<n>``: n is a UUID (RFC 9562
version 8, custom) made from HMAC(project key, UID), so a reference in an SR or SEG still points
at the replaced UID of the CT it names, in this export and in every later one of the project.
UIDs that name a definition rather than an instance (SOP classes, transfer syntaxes, coding
schemes, well-known frames of reference) are kept: replacing them would break the meaning.
"""

from __future__ import annotations

import uuid

from pydicom.uid import UID

from pacs.deid.pseudonyms import ProjectKey

# PS3.5 B.2: UIDs derived from a UUID are the root 2.25 followed by its integer value.
UUID_ROOT = "2.25."
# Keywords whose UI value is a definition, not an instance, even when it is not in the
# standard's registry (a vendor's private SOP class, a private coding scheme).
_DEFINITION_SUFFIXES = ("ClassUID", "SyntaxUID", "ClassUIDInFile", "SyntaxUIDInFile")
_DEFINITION_KEYWORDS = frozenset(
    {
        "CodingSchemeUID",
        "ContextGroupExtensionCreatorUID",
        "ImplementationClassUID",
        "MappingResourceUID",
        "PrivateInformationCreatorUID",
    }
)


def is_definition(keyword: str, uid: str) -> bool:
    """True when *uid* is a registered UID or *keyword* holds a class/syntax/scheme UID."""
    return (
        UID(uid).name != uid  # registered in PS3.6 Annex A: pydicom knows its name
        or keyword.endswith(_DEFINITION_SUFFIXES)
        or keyword in _DEFINITION_KEYWORDS
    )


class UIDMap:
    """Replaces instance UIDs under a project key (a pure function of key and UID: no state).

    Parameters
    ----------
    key : ProjectKey
        The project's key: the same UID maps to the same replacement under the same key.
    """

    def __init__(self, key: ProjectKey) -> None:
        self._key = key

    def replace(self, uid: str) -> str:
        """The replacement of *uid* (its value stripped of padding)."""
        raw = bytearray(self._key.digest("uid", uid.strip().rstrip("\0"))[:16])
        raw[6] = (raw[6] & 0x0F) | 0x80  # version 8
        raw[8] = (raw[8] & 0x3F) | 0x80  # RFC 9562 variant
        return UUID_ROOT + str(uuid.UUID(bytes=bytes(raw)).int)
