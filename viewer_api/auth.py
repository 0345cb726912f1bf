"""Bearer-token authentication and role checks for every HTTP route but /healthz.

Embedded default: HS256 tokens signed with a secret generated on first start under
``$PACS_HOME`` (``pacs token create`` prints one). Production: tokens from an OIDC issuer,
verified against its JWKS (``PACS_OIDC_ISSUER``, ``PACS_OIDC_AUDIENCE``). Either way a token
may live at most ``PACS_TOKEN_MAX_TTL`` seconds (exp - iat) and clocks may differ by
``PACS_TOKEN_LEEWAY`` seconds.

Each token speaks for facilities (its ``facilities`` claim, ``PACS_FACILITIES_CLAIM`` names
another for an OIDC issuer): it sees only their studies and those shared with them; a token
without the claim speaks for the archive's default facility, and ``*`` (admin only) for all.

Least privilege: the EMR reads results (FHIR, findings), never images; a clinician opens the
images through a viewer link with a token of their own.
"""

from __future__ import annotations

import copy
import enum
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import jwt
from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from pacs.errors import InvalidFacility
from pacs.facilities import EVERY_FACILITY, Scope, check_name
from pacs.files import load_secret
from viewer_api.jwks import IssuerKeys
from viewer_api.problems import BadRequest, Forbidden, Unauthorized

SECRET_FILE = "jwt-secret"  # noqa: S105 - the name of the file holding it
MIN_SECRET_BYTES = 32  # RFC 7518 3.2: an HS256 key is at least as long as SHA-256 output
ISSUER = "pacs-embedded"
ROLE_CLAIM = "roles"
FACILITY_CLAIM = "facilities"
OIDC_ALGORITHMS = ("RS256", "ES256")
DEFAULT_MAX_TTL = 24 * 3600
DEFAULT_LEEWAY = 30
# A verified token is taken again without decoding it for this many seconds (while it has not
# expired): a viewer sends the same token with each of hundreds of frame requests, and PyJWT's
# decode and signature check cost ~0.3 ms of CPU each time. (An OIDC issuer's keys are cached
# for longer anyway: viewer_api.jwks.)
VERIFIED_FOR = 60.0
VERIFIED_TOKENS = 1024


class Role(enum.StrEnum):
    MODALITY = "modality"  # STOW-RS: sends images
    RADIOLOGIST = "radiologist"  # reads everything clinical, reviews and signs
    EMR = "emr"  # reads results: FHIR and findings, no pixels, no change feed
    ADMIN = "admin"  # everything


# DICOMweb (QIDO, WADO-RS/URI, frames, rendered, thumbnails, bulk data) and the change feed.
READERS = (Role.RADIOLOGIST, Role.ADMIN)
# Results: FHIR (ImagingStudy, Patient, DiagnosticReport, ...) and the findings API.
RESULT_READERS = (Role.RADIOLOGIST, Role.EMR, Role.ADMIN)
WRITERS = (Role.MODALITY, Role.ADMIN)


@dataclass(frozen=True)
class Principal:
    """Who made a request, from a verified token.

    Attributes
    ----------
    facilities : frozenset of str
        The facilities the token names (its facilities claim); empty: none named, the
        archive's default facility.
    all_facilities : bool
        A global admin (the claim holds ``*``): every facility.
    token_id : str, optional
        The token's jti, when it has one (audit).
    """

    subject: str
    roles: frozenset[Role]
    facilities: frozenset[str] = frozenset()
    all_facilities: bool = False
    token_id: str | None = None

    def scope(self, default_facility: str) -> Scope:
        """The facilities whose studies this principal sees."""
        if self.all_facilities:
            return Scope.everything()
        return Scope.of(self.facilities or {default_facility})

    def facility_for_writing(self, default_facility: str, asked: str | None = None) -> str:
        """The facility an instance this principal stores belongs to: *asked* (it must be in
        the principal's scope), else its only facility.

        Raises
        ------
        BadRequest
            *asked* is no facility name or outside the scope, or the token names several
            facilities and none was asked for.
        """
        if asked is not None:
            try:
                check_name(asked)
            except InvalidFacility as exc:
                raise BadRequest(str(exc)) from exc
            if not self.scope(default_facility).includes(asked):
                raise BadRequest(f"this token does not speak for facility {asked!r}")
            return asked
        if self.all_facilities:
            return default_facility
        if len(self.facilities) > 1:
            raise BadRequest(
                "this token names several facilities: say which one with ?facility=NAME"
            )
        return next(iter(self.facilities), default_facility)


class TokenVerifier:
    """Verifies bearer tokens: HS256 with a local secret, or RS256/ES256 from an OIDC JWKS.

    An OIDC token is checked for shape (a JWT of an accepted algorithm, with a key id, from the
    configured issuer) before the issuer's keys are looked up, so garbage never costs a fetch.
    A token must say when it was issued (iat), so that its lifetime can be checked against
    *max_ttl*; *leeway* seconds of clock skew are tolerated on exp, nbf and iat.
    """

    def __init__(
        self,
        secret: bytes | None = None,
        oidc_issuer: str | None = None,
        oidc_audience: str | None = None,
        *,
        max_ttl: int = DEFAULT_MAX_TTL,
        leeway: int = DEFAULT_LEEWAY,
    ) -> None:
        if (secret is None) == (oidc_issuer is None):
            raise ValueError("configure exactly one of an HS256 secret or an OIDC issuer")
        self.secret = secret
        self.issuer = oidc_issuer or ISSUER
        self.audience = oidc_audience
        self.max_ttl = max_ttl
        self.leeway = leeway
        self.facilities_claim = FACILITY_CLAIM
        self._keys = IssuerKeys(oidc_issuer) if oidc_issuer else None
        # token -> (principal, exp, when verified (monotonic)): see VERIFIED_FOR.
        self._verified: dict[str, tuple[Principal, int, float]] = {}

    @property
    def may_block(self) -> bool:
        """Whether verifying may wait on the network: an OIDC issuer's keys may have to be
        fetched. A shared secret's verification is CPU only (~0.3 ms; none when cached)."""
        return self._keys is not None

    def limited(
        self, max_ttl: int, leeway: int, facilities_claim: str = FACILITY_CLAIM
    ) -> TokenVerifier:
        """This verifier (same secret or issuer keys) with other lifetime and skew limits, and
        the name of the claim listing a token's facilities (an OIDC issuer may use its own)."""
        other = copy.copy(self)
        other.max_ttl, other.leeway = max_ttl, leeway
        other.facilities_claim = facilities_claim
        other._verified = {}  # verified under other limits
        return other

    def verify(self, token: str) -> Principal:
        """Return who the token speaks for (a token verified in the last VERIFIED_FOR seconds
        and not expired since: from memory).

        Raises
        ------
        Unauthorized
            The token is not valid (malformed, forged, expired, odd claims).
        IssuerUnavailable
            The OIDC issuer's keys are needed and cannot be fetched now (503).
        """
        now, ticks = time.time(), time.monotonic()
        cached = self._verified.get(token)
        if cached is not None:
            principal, expires, verified_at = cached
            if ticks - verified_at < VERIFIED_FOR and now - self.leeway < expires:
                return principal
        try:
            key, algorithms = self._key(token)
            claims = jwt.decode(
                token,
                key,
                algorithms=algorithms,
                issuer=self.issuer,
                audience=self.audience,
                leeway=self.leeway,
                options={
                    "require": ["exp", "iat", "sub"],
                    "verify_aud": self.audience is not None,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from exc
        self._check_lifetime(claims)
        principal = _principal(claims, self.facilities_claim)
        if len(self._verified) >= VERIFIED_TOKENS:
            self._verified.clear()  # crude, and rare: a thousand live tokens in one minute
        self._verified[token] = (principal, int(claims["exp"]), ticks)
        return principal

    def _check_lifetime(self, claims: dict[str, Any]) -> None:
        # PyJWT read both as integers; a long-lived token is a stolen one's best friend.
        try:
            lifetime = int(claims["exp"]) - int(claims["iat"])
        except (TypeError, ValueError) as exc:
            raise Unauthorized("invalid token: exp and iat must be numbers") from exc
        if lifetime > self.max_ttl:
            raise Unauthorized(
                f"invalid token: its lifetime ({lifetime} s) exceeds the "
                f"{self.max_ttl} s allowed (PACS_TOKEN_MAX_TTL)"
            )

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self._keys is None:
            return self.secret, ["HS256"]
        header = jwt.get_unverified_header(token)
        algorithm, kid = header.get("alg"), header.get("kid")
        if algorithm not in OIDC_ALGORITHMS:
            raise Unauthorized(f"invalid token: algorithm {algorithm!r} is not accepted")
        if not isinstance(kid, str) or not kid:
            raise Unauthorized("invalid token: no key id (kid) in its header")
        unverified = jwt.decode(token, options={"verify_signature": False})
        if unverified.get("iss") != self.issuer:
            raise Unauthorized("invalid token: not from the configured issuer")
        return self._keys.key(kid), [algorithm]


def _principal(claims: dict[str, Any], facilities_claim: str = FACILITY_CLAIM) -> Principal:
    """The claims of a verified token as a Principal; odd claim types are a 401, and so is
    ``*`` (every facility) in the token of anyone but an admin."""
    subject = claims["sub"]
    if not isinstance(subject, str) or not subject:
        raise Unauthorized("invalid token: the sub claim must be a non-empty string")
    roles = claims.get(ROLE_CLAIM, [])
    if isinstance(roles, str):
        roles = [roles]
    if not isinstance(roles, list) or not all(isinstance(r, str) for r in roles):
        raise Unauthorized(f"invalid token: the {ROLE_CLAIM} claim must be a list of strings")
    known = {role.value for role in Role}
    granted = frozenset(Role(r) for r in roles if r in known)
    names = claims.get(facilities_claim, [])
    if isinstance(names, str):
        names = [names]
    if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
        raise Unauthorized(
            f"invalid token: the {facilities_claim} claim must be a list of facility names"
        )
    every = EVERY_FACILITY in names
    if every and Role.ADMIN not in granted:
        raise Unauthorized(
            f"invalid token: only an admin token may name every facility ({EVERY_FACILITY!r})"
        )
    try:
        named = frozenset(check_name(n) for n in names if n != EVERY_FACILITY)
    except InvalidFacility as exc:
        raise Unauthorized(f"invalid token: {exc}") from exc
    jti = claims.get("jti")
    return Principal(
        subject,
        granted,
        named,
        every,
        jti if isinstance(jti, str) else None,
    )


def load_or_create_secret(home: Path, shared: Path | None = None) -> bytes:
    """The embedded HS256 secret: *shared* (``PACS_JWT_SECRET_FILE``, one file every node of
    a site reads; never made here), else ``$PACS_HOME/jwt-secret``, made on first start (0600
    in a 0700 *home*).

    Raises
    ------
    UnsafeSecret
        The file is open to group or others, or shorter than 32 bytes (RFC 7518 3.2: an
        HS256 key is at least as long as the hash output); nothing starts with such a key.
    """
    return load_secret(
        home / SECRET_FILE,
        shared,
        "PACS_JWT_SECRET_FILE",
        MIN_SECRET_BYTES,
        lambda: secrets.token_bytes(MIN_SECRET_BYTES),
    )


def create_token(
    secret: bytes,
    subject: str,
    roles: list[Role],
    ttl_seconds: int,
    facilities: list[str] | None = None,
) -> str:
    """An embedded HS256 token for *subject* with *roles*, valid for *ttl_seconds*, limited to
    *facilities* (None or empty: the archive's default facility; ``["*"]``: every facility,
    admin only)."""
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": subject,
        ROLE_CLAIM: [role.value for role in roles],
        "iat": now,
        "exp": now + ttl_seconds,
        "jti": secrets.token_hex(8),
    }
    if facilities:
        claims[FACILITY_CLAIM] = list(facilities)
    return jwt.encode(claims, secret, algorithm="HS256")


def authenticated(request: Request) -> Principal:
    """The principal of the request's bearer token, verified once per request (the role check
    and the facility scope of :mod:`viewer_api.deps` both read it). Raises Unauthorized."""
    cached: Principal | None = getattr(request.state, "principal", None)
    if cached is not None:
        return cached
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        raise Unauthorized("Authorization: Bearer <token> required")
    verifier: TokenVerifier = request.app.state.verifier
    principal = verifier.verify(token.strip())
    request.state.principal = principal
    return principal


def require(*allowed: Role) -> Callable[..., Awaitable[Principal]]:
    """A dependency admitting principals with one of *allowed* roles.

    A coroutine, so that FastAPI runs it on the event loop instead of handing it to a worker
    thread (a thread hop per request cost more than verifying an HS256 token); only a verifier
    that may fetch an OIDC issuer's keys is called from a worker thread."""

    async def dependency(request: Request) -> Principal:
        if request.app.state.verifier.may_block:
            principal = await run_in_threadpool(authenticated, request)
        else:
            principal = authenticated(request)
        if not principal.roles & set(allowed):
            wanted = ", ".join(role.value for role in allowed)
            raise Forbidden(f"this needs one of the roles: {wanted}")
        return principal

    return dependency


Reader = Annotated[Principal, Depends(require(*READERS))]
ResultReader = Annotated[Principal, Depends(require(*RESULT_READERS))]
Writer = Annotated[Principal, Depends(require(*WRITERS))]
Admin = Annotated[Principal, Depends(require(Role.ADMIN))]


async def _global_admin(principal: Admin) -> Principal:
    """An admin of every facility (the audit trail spans them all)."""
    if not principal.all_facilities:
        raise Forbidden("this needs an admin token of every facility (--all-facilities)")
    return principal


GlobalAdmin = Annotated[Principal, Depends(_global_admin)]
Radiologist = Annotated[Principal, Depends(require(Role.RADIOLOGIST, Role.ADMIN))]
