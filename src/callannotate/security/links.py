"""Signed links: short-lived URLs a browser can open without an ``Authorization`` header.

A link is three query parameters added to a path: ``exp`` (Unix time it stops working),
``kid`` (the JWT signing key it was signed under) and ``sig``, an HMAC-SHA256 over
``[purpose, resource id, subject, exp]``. The HMAC key is derived from the JWT signing key
named by ``kid`` (``HMAC(signing key, "callannotate signed-link v1")``), so links need no
secret of their own: they follow the key ring's rotation (a link signed under a retired key
verifies as long as that key still verifies access tokens) and a link can never be replayed
as an access token or the other way round.

The caller decides what ``purpose`` and ``subject`` mean (the report viewer signs the
purposes ``report`` and ``audio`` for a job and its owner): a link verifies only for the
same four values, so a link of one job, owner or route opens nothing else. What a refused
link answers is :class:`~callannotate.security.errors.AuthenticationFailed` (401); its detail
never says which part was wrong, only whether it expired.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass

from callannotate.security.errors import AuthenticationFailed
from callannotate.security.keyring import KeyRing

#: The query parameters of a signed link.
EXPIRES_PARAM, KID_PARAM, SIG_PARAM = "exp", "kid", "sig"
LINK_PARAMS = (EXPIRES_PARAM, KID_PARAM, SIG_PARAM)
_DERIVE_LABEL = b"callannotate signed-link v1"
_MAX_KID = 64
_SIG_BYTES = hashlib.sha256().digest_size


@dataclass(frozen=True)
class LinkClaims:
    """What a link is signed over."""

    purpose: str
    resource_id: str
    subject: str
    expires_at: int


@dataclass(frozen=True)
class LinkParams:
    """The link parameters of a request, parsed but not verified."""

    expires_at: int
    kid: str
    sig: bytes


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode("ascii").rstrip("=")


def _mac(secret: bytes, claims: LinkClaims) -> bytes:
    key = hmac.new(secret, _DERIVE_LABEL, hashlib.sha256).digest()
    message = json.dumps(
        [claims.purpose, claims.resource_id, claims.subject, claims.expires_at],
        separators=(",", ":"),
        ensure_ascii=True,
    ).encode("ascii")
    return hmac.new(key, message, hashlib.sha256).digest()


def sign_link(keyring: KeyRing, claims: LinkClaims) -> dict[str, str]:
    """The query parameters (``exp``, ``kid``, ``sig``) of a link for ``claims``."""
    key = keyring.current
    return {
        EXPIRES_PARAM: str(claims.expires_at),
        KID_PARAM: key.kid,
        SIG_PARAM: _b64(_mac(key.secret, claims)),
    }


def parse_link(query: Mapping[str, str], now: float | None = None) -> LinkParams:
    """The link parameters of ``query``; 401 when one is missing, malformed or expired."""
    exp, kid, sig = (query.get(name, "") for name in LINK_PARAMS)
    try:
        expires_at = int(exp) if exp.isascii() and exp.isdigit() and len(exp) <= 12 else -1
        raw = base64.urlsafe_b64decode(sig + "=" * (-len(sig) % 4)) if len(sig) < 64 else b""
    except (binascii.Error, ValueError):
        raw = b""
    if expires_at < 0 or not kid or len(kid) > _MAX_KID or len(raw) != _SIG_BYTES:
        raise AuthenticationFailed("invalid link")
    if (time.time() if now is None else now) >= expires_at:
        raise AuthenticationFailed("the link has expired", reason="expired")
    return LinkParams(expires_at, kid, raw)


def verify_link(
    keyring: KeyRing, params: LinkParams, purpose: str, resource: str, subject: str
) -> None:
    """Raise 401 unless ``params`` sign exactly ``(purpose, resource, subject, exp)``."""
    secret = keyring.verification_key(params.kid)
    claims = LinkClaims(purpose, resource, subject, params.expires_at)
    if secret is None or not hmac.compare_digest(_mac(secret, claims), params.sig):
        raise AuthenticationFailed("invalid link")
