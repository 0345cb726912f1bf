"""Secrets the archive must read back (webhook signing keys), encrypted at rest.

A webhook secret signs every delivery (HMAC), so it cannot be stored hashed: it is stored
sealed with AES-256-GCM under a key generated on first use in ``$PACS_HOME/secret-key``
(0600, refused when group or others can read it, like the token secret), or read from
``PACS_SECRET_KEY_FILE``, one file every node of a site shares: any node's dispatcher may
deliver any subscription's events, so every node must open every sealed secret. A copy of the
index alone (a backup, a replica) then holds no usable secret.

Rows written before sealing existed hold the secret as it was given; :func:`seal_plain_rows`
seals them (``pacs serve`` runs it on start), and :meth:`SecretBox.open` still reads them.
"""

from __future__ import annotations

import base64
import binascii
import os
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from pacs.errors import ArchiveError
from pacs.files import load_secret

KEY_FILE = "secret-key"
KEY_BYTES = 32  # AES-256
NONCE_BYTES = 12  # NIST SP 800-38D: 96-bit nonces, random per message
#: Marks a sealed value; anything else is a secret stored before sealing.
PREFIX = "aesgcm:"


class SealedSecretError(ArchiveError):
    """A sealed secret that does not open with this archive's key (another key, or altered)."""


class SecretBox:
    """Seals and opens short secrets with one AES-GCM key; *purpose* is bound to each value
    (associated data), so a value sealed for one use does not open as another."""

    def __init__(self, key: bytes, purpose: str = "webhook-secret") -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"an AES-256 key is {KEY_BYTES} bytes, not {len(key)}")
        self._aead = AESGCM(key)
        self._purpose = purpose.encode()

    @classmethod
    def at(cls, home: Path, shared: Path | None = None) -> SecretBox:
        """The box of the archive at *home*: the key in *shared* (``PACS_SECRET_KEY_FILE``,
        never made here), else in ``home/secret-key``, made on first use.

        Raises
        ------
        UnsafeSecret
            The key file is missing (*shared*), open to group or others, or too short.
        """
        key = load_secret(
            home / KEY_FILE,
            shared,
            "PACS_SECRET_KEY_FILE",
            KEY_BYTES,
            lambda: AESGCM.generate_key(bit_length=8 * KEY_BYTES),
        )
        return cls(key[:KEY_BYTES])

    def seal(self, secret: str) -> str:
        nonce = os.urandom(NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode(), self._purpose)
        return PREFIX + base64.b64encode(nonce + sealed).decode("ascii")

    def open(self, stored: str) -> str:
        """The secret in *stored*: a sealed value, or a plain one from before sealing.

        Raises
        ------
        SealedSecretError
            A sealed value this key does not open.
        """
        if not is_sealed(stored):
            return stored
        try:
            raw = base64.b64decode(stored.removeprefix(PREFIX), validate=True)
            return self._aead.decrypt(raw[:NONCE_BYTES], raw[NONCE_BYTES:], self._purpose).decode()
        except (InvalidTag, binascii.Error, ValueError) as exc:
            raise SealedSecretError(
                f"a stored secret does not open with {KEY_FILE} (another archive's key?)"
            ) from exc


def is_sealed(stored: str) -> bool:
    return stored.startswith(PREFIX)
