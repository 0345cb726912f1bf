"""Keyed, repeatable replacements: patient pseudonyms and per-patient date offsets.

Everything is an HMAC-SHA256 under the project key, each use under its own label, so the same
patient gets the same pseudonym and the same date offset in every export of the project, and
nobody without the key can link a pseudonym back to a patient ID (or across projects).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from pacs.deid.errors import InvalidProjectKey

# NIST SP 800-107 / RFC 2104: an HMAC key should be at least as long as the hash output would
# allow guessing; 16 bytes (128 bits) is the floor we accept for a project secret.
MIN_KEY_BYTES = 16
PSEUDONYM_PREFIX = "ANON"
PSEUDONYM_HEX_DIGITS = 20  # 80 bits: collisions stay negligible for any archive's patients
# Dates move back by 1 to 10 years (whole days, so times of day and weekdays' spacing survive):
# far enough that a shifted date is no hint of the real one, near enough to stay plausible.
MIN_OFFSET_DAYS = 365
MAX_OFFSET_DAYS = 3652


class ProjectKey:
    """The secret of one research project; every keyed derivation goes through it.

    Parameters
    ----------
    key : bytes
        At least ``MIN_KEY_BYTES`` bytes, kept by the project (a new key is a new set of
        pseudonyms: exports under different keys cannot be linked).

    Raises
    ------
    InvalidProjectKey
        The key is shorter than ``MIN_KEY_BYTES``.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < MIN_KEY_BYTES:
            raise InvalidProjectKey(
                f"a project key needs at least {MIN_KEY_BYTES} bytes, got {len(key)}"
            )
        self._key = bytes(key)

    def digest(self, label: str, *parts: str) -> bytes:
        """HMAC-SHA256 of *parts* under the key, separated by NUL and prefixed by *label*."""
        message = "\0".join((label, *parts)).encode("utf-8")
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "ProjectKey(<secret>)"


@dataclass(frozen=True)
class PatientIdentity:
    """Who an instance belongs to, as far as linking exports goes.

    PatientID within its issuer (PS3.3 C.7.1.1) when the instance has one; otherwise the study
    stands for the patient, so an instance without an ID is never linked to another patient's.
    """

    kind: str  # "patient" or "study"
    issuer: str
    value: str

    @classmethod
    def of(cls, PatientID: str, IssuerOfPatientID: str, StudyInstanceUID: str) -> PatientIdentity:
        if PatientID.strip():
            return cls("patient", IssuerOfPatientID.strip(), PatientID.strip())
        return cls("study", "", StudyInstanceUID)


def pseudonym(key: ProjectKey, identity: PatientIdentity) -> str:
    """The patient's pseudonym in this project (used for Patient ID and Patient's Name)."""
    digest = key.digest("patient", identity.kind, identity.issuer, identity.value)
    return PSEUDONYM_PREFIX + digest.hex().upper()[:PSEUDONYM_HEX_DIGITS]


def date_offset_days(key: ProjectKey, identity: PatientIdentity) -> int:
    """Days added to every date of the patient (negative: into the past), the same each time."""
    digest = key.digest("date-offset", identity.kind, identity.issuer, identity.value)
    span = MAX_OFFSET_DAYS - MIN_OFFSET_DAYS + 1
    return -(MIN_OFFSET_DAYS + int.from_bytes(digest[:8], "big") % span)
