"""Validation of UIDs and AE titles, before they become keys, paths or index rows."""

from __future__ import annotations

import re

# PS3.5 9.1: components of digits separated by "."; no leading zero in a multi-digit
# component; at most 64 characters in all.
_UID = re.compile(r"(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*")
UID_MAX_LENGTH = 64

# PS3.5 6.2 (AE VR): up to 16 characters of the default repertoire, no backslash or controls,
# not only spaces.
_AE_TITLE = re.compile(r"[\x20-\x5b\x5d-\x7e]{1,16}")


def is_valid_uid(value: object) -> bool:
    """Return True when *value* is a UID as PS3.5 9.1 defines it."""
    return (
        isinstance(value, str)
        and 0 < len(value) <= UID_MAX_LENGTH
        and _UID.fullmatch(value) is not None
    )


def is_valid_ae_title(value: object) -> bool:
    """Return True when *value* is a usable AE title (PS3.5 6.2, AE value representation)."""
    return isinstance(value, str) and bool(value.strip()) and _AE_TITLE.fullmatch(value) is not None
