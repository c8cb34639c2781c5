"""Access tokens: short-lived JWTs (HS256) signed by the key ring, ``kid`` in the header.

Every decode checks the signature with the key named by ``kid`` (unknown or expired key:
refused), the algorithm (only HS256; ``alg=none`` and others are refused), and the claims
``iss``, ``aud``, ``exp``, ``nbf``, ``iat``, ``jti``, ``sub`` (all required).

A token that verified is remembered (bounded, per process) until its ``exp``: the same token
on the next request skips PyJWT's parsing and HMAC, which cost more than the rest of a small
request together. A hit still checks the expiry and that the signing key still verifies, so a
retired key or an expired token is refused exactly as on the first decode.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass

import jwt

from callannotate.config import AuthSettings
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.keyring import KeyRing
from callannotate.security.scopes import format_scopes, parse_scopes

ALGORITHM = "HS256"
TOKEN_TYPE = "access"
REQUIRED_CLAIMS = ["exp", "iat", "nbf", "iss", "aud", "sub", "jti"]
VERIFIED_CACHE_SIZE = 4096


@dataclass(frozen=True)
class AccessClaims:
    subject: str
    jti: str
    scopes: frozenset[str]
    expires_at: int
    client_id: str | None = None
    issued_at: int = 0  # iat, seconds since the epoch


class TokenCodec:
    """Encode and verify access JWTs for one issuer/audience."""

    def __init__(self, settings: AuthSettings, keyring: KeyRing) -> None:
        self.settings = settings
        self.keyring = keyring
        # token -> (claims, kid) of tokens that verified; insertion order = eviction order
        self._verified: dict[str, tuple[AccessClaims, str]] = {}
        self._verified_lock = threading.Lock()

    def encode(
        self,
        subject: str,
        scopes: frozenset[str],
        *,
        client_id: str | None = None,
        now: float | None = None,
        ttl_s: int | None = None,
    ) -> tuple[str, AccessClaims]:
        issued = int(time.time() if now is None else now)
        expires = issued + (self.settings.access_token_ttl_s if ttl_s is None else ttl_s)
        jti = uuid.uuid4().hex
        payload: dict[str, object] = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "sub": subject,
            "iat": issued,
            "nbf": issued,
            "exp": expires,
            "jti": jti,
            "typ": TOKEN_TYPE,
            "scope": format_scopes(scopes),
        }
        if client_id is not None:
            payload["cid"] = client_id
        key = self.keyring.current
        token = jwt.encode(payload, key.secret, algorithm=ALGORITHM, headers={"kid": key.kid})
        return token, AccessClaims(subject, jti, scopes, expires, client_id, issued)

    def decode(self, token: str) -> AccessClaims:
        """The verified claims, or :class:`AuthenticationFailed` (never says what was wrong)."""
        hit = self._verified.get(token)
        if hit is not None:
            claims, kid = hit
            if time.time() >= claims.expires_at + self.settings.leeway_s:
                reason = "expired"
            elif self.keyring.verification_key(kid) is None:
                reason = "bad_token"  # its signing key was retired since
            else:
                return claims
            with self._verified_lock:
                self._verified.pop(token, None)
            raise AuthenticationFailed(reason=reason)
        verified, kid = self._verify(token)
        with self._verified_lock:
            if len(self._verified) >= VERIFIED_CACHE_SIZE:
                self._verified.pop(next(iter(self._verified)))
            self._verified[token] = (verified, kid)
        return verified

    def _verify(self, token: str) -> tuple[AccessClaims, str]:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed() from exc
        kid = header.get("kid")
        if header.get("alg") != ALGORITHM or not isinstance(kid, str):
            raise AuthenticationFailed()
        secret = self.keyring.verification_key(kid)
        if secret is None:
            raise AuthenticationFailed()
        try:
            claims = jwt.decode(
                token,
                secret,
                algorithms=[ALGORITHM],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                options={"require": REQUIRED_CLAIMS},
            )
        except jwt.ExpiredSignatureError as exc:
            raise AuthenticationFailed(reason="expired") from exc
        except jwt.PyJWTError as exc:
            raise AuthenticationFailed() from exc
        if claims.get("typ") != TOKEN_TYPE or not isinstance(claims.get("sub"), str):
            raise AuthenticationFailed()
        cid = claims.get("cid")
        verified = AccessClaims(
            subject=claims["sub"],
            jti=str(claims["jti"]),
            scopes=parse_scopes(str(claims.get("scope", ""))),
            expires_at=int(claims["exp"]),
            client_id=cid if isinstance(cid, str) else None,
            issued_at=int(claims["iat"]),
        )
        return verified, kid
