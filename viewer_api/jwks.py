"""An OIDC issuer's signing keys (its JWKS), cached, fetched single-flight, backed off on failure.

Requests never wait on one another for the issuer: no lock is held across the network. One
fetch runs at a time; while it runs, other requests use the keys already known, or are answered
503 at once. A failed fetch is remembered: the next try waits 1, 2, 4 ... up to 60 s, so a dead
issuer costs one attempt per back-off period, not one per request. An unknown key id (the
issuer rotated its keys) refreshes the set at most once per ``REFRESH_INTERVAL``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.request
from typing import Any

import jwt

from viewer_api.problems import ServiceUnavailable, Unauthorized

log = logging.getLogger(__name__)

FETCH_TIMEOUT = 3.0  # seconds, per HTTP request to the issuer
KEYS_LIFESPAN = 3600.0  # keys are refreshed this long after a fetch (still used if it fails)
REFRESH_INTERVAL = 30.0  # an unknown key id refreshes the set at most this often
BACKOFF_MIN, BACKOFF_MAX = 1.0, 60.0


class IssuerUnavailable(ServiceUnavailable):
    """The issuer's keys are needed and cannot be fetched now (503: retry later, the token
    may well be valid)."""


class IssuerKeys:
    """The signing keys of *issuer*, from ``{issuer}/.well-known/openid-configuration``."""

    def __init__(self, issuer: str, timeout: float = FETCH_TIMEOUT) -> None:
        self.issuer = issuer.rstrip("/")
        self.timeout = timeout
        self._keys: dict[str, jwt.PyJWK] = {}
        self._fetched_at = -float("inf")
        self._jwks_uri: str | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._fetching = False
        self._state = threading.Lock()  # guards the fields above; never held across I/O

    def key(self, kid: str) -> jwt.PyJWK:
        """The key *kid*; raises Unauthorized (no such key) or IssuerUnavailable."""
        now = time.monotonic()
        with self._state:
            known = self._keys.get(kid)
            fresh = now - self._fetched_at < KEYS_LIFESPAN
            if known is not None and fresh:
                return known
            # Stale keys or an unknown kid (keys rotated) call for a fetch, rate-limited.
            due = now >= self._retry_at and now - self._fetched_at >= REFRESH_INTERVAL
            fetch = due and not self._fetching
            if fetch:
                self._fetching = True
        if not fetch:
            return self._without_fetch(kid, known)
        try:
            keys = self._fetch()
        except Exception as exc:  # whatever went wrong, the issuer's keys are unavailable
            self._failed(exc)
            return self._without_fetch(kid, known)
        with self._state:
            if self._failures:
                log.info("token issuer %s reachable again", self.issuer)
            self._keys, self._fetched_at = keys, time.monotonic()
            self._failures, self._retry_at, self._fetching = 0, 0.0, False
        if kid not in keys:
            raise Unauthorized(f"invalid token: the issuer has no signing key {kid!r}")
        return keys[kid]

    def _without_fetch(self, kid: str, known: jwt.PyJWK | None) -> jwt.PyJWK:
        """Stale keys are better than none; an unknown kid of a reachable issuer is a 401."""
        if known is not None:
            return known
        with self._state:
            never_fetched = self._fetched_at == -float("inf")
            unreachable = self._failures > 0 or self._fetching or never_fetched
        if unreachable:
            raise IssuerUnavailable("the token issuer is unreachable; try again later")
        raise Unauthorized(f"invalid token: the issuer has no signing key {kid!r}")

    def _failed(self, exc: Exception) -> None:
        with self._state:
            self._failures += 1
            doublings = min(self._failures - 1, 30)  # uncapped, 2 ** 1024 would overflow
            delay = min(BACKOFF_MIN * 2**doublings, BACKOFF_MAX)
            self._retry_at = time.monotonic() + delay
            self._fetching = False
            first = self._failures == 1
        if first:  # one line per outage, not one per request
            log.warning("token issuer %s unreachable, backing off: %s", self.issuer, exc)

    def _fetch(self) -> dict[str, jwt.PyJWK]:
        if self._jwks_uri is None:
            discovery = self._get_json(f"{self.issuer}/.well-known/openid-configuration")
            self._jwks_uri = str(discovery["jwks_uri"])
        keys = jwt.PyJWKSet.from_dict(self._get_json(self._jwks_uri)).keys
        return {str(k.key_id): k for k in keys if k.key_id}

    def _get_json(self, url: str) -> Any:
        if not url.startswith(("https://", "http://")):
            raise ValueError(f"not an http(s) URL: {url!r}")
        with urllib.request.urlopen(url, timeout=self.timeout) as response:  # noqa: S310
            return json.load(response)
