"""Authentication policy: logins, token rotation, client credentials, API keys, principals.

Methods are synchronous (database, argon2): the API calls them through ``anyio.to_thread``;
the CLI calls them directly. Users' role/disabled state and API keys are cached for
``auth.principal_cache_s`` seconds per process; changes made through this service drop the
cache at once, changes made by another process (the CLI) are seen within that time.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

from callannotate.config import Settings
from callannotate.db.engine import Database
from callannotate.db.models import ROLES, ApiKey, OAuthClient, RefreshToken, User
from callannotate.db.types import utcnow
from callannotate.errors import BadRequest, CallAnnotateError, NotFound
from callannotate.observability.metrics import observe_auth_failure
from callannotate.security import credentials
from callannotate.security.audit import AuditLog, Outcome, current_actor
from callannotate.security.errors import AuthenticationFailed, PermissionDenied, TooManyAttempts
from callannotate.security.keyring import KeyRing
from callannotate.security.passwords import Passwords, check_password_policy
from callannotate.security.principal import AuthMethod, Principal
from callannotate.security.scopes import (
    ROLE_SCOPES,
    format_scopes,
    grantable,
    parse_scopes,
    unknown_scopes,
)
from callannotate.security.singleflight import SingleFlight
from callannotate.security.store import AuthStore
from callannotate.security.throttle import LoginThrottle, MemoryLoginThrottle
from callannotate.security.tokens import AccessClaims, TokenCodec

logger = logging.getLogger(__name__)

USERNAME_RE = re.compile(r"^[a-z0-9][a-z0-9._@-]{0,63}$")
#: Longest label of an API key or OAuth2 client (the column's size).
MAX_LABEL = 100


class InvalidGrant(CallAnnotateError):
    """RFC 6749 ``invalid_grant``: wrong user name or password, bad or reused refresh token."""

    status_code = 400
    code = "invalid_grant"


class InvalidClient(CallAnnotateError):
    """RFC 6749 ``invalid_client``: unknown client, wrong secret or disabled client."""

    status_code = 401
    code = "invalid_client"

    def __init__(self, detail: str = "invalid client credentials") -> None:
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": 'Basic realm="callannotate"'}


class InvalidScope(CallAnnotateError):
    status_code = 400
    code = "invalid_scope"


def _label(name: str) -> str:
    """The name of a key or client without surrounding blanks: 1 to :data:`MAX_LABEL`
    characters (PostgreSQL would refuse a longer one with an error, SQLite store it)."""
    name = name.strip()
    if not name or len(name) > MAX_LABEL:
        raise BadRequest(f"the name must have 1 to {MAX_LABEL} characters")
    return name


@dataclass(frozen=True)
class TokenPair:
    """What ``POST /auth/token`` returns (``refresh_token`` is ``None`` for clients)."""

    access_token: str
    expires_in: int
    scopes: frozenset[str]
    refresh_token: str | None = None


@dataclass(frozen=True)
class _UserState:
    id: str
    username: str
    role: str
    disabled: bool
    tokens_after: int | None = None  # access tokens issued before (iat, seconds) are refused


def _user_state_of(user: User) -> _UserState:
    after = user.tokens_valid_after
    return _UserState(
        user.id,
        user.username,
        user.role,
        user.disabled,
        None if after is None else int(after.timestamp()),
    )


@dataclass
class _Cache:
    ttl: float
    items: dict[str, tuple[float, object]] = field(default_factory=dict)

    def get(self, key: str) -> object | None:
        hit = self.items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def entry(self, key: str) -> tuple[float, object] | None:
        """``(expiry, value)`` of an unexpired entry, ``None`` otherwise."""
        hit = self.items.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit

    def drop(self, key: str) -> None:
        self.items.pop(key, None)

    def deadline(self, key: str) -> float | None:
        """When the entry of ``key`` expires (``time.monotonic()``), ``None`` without one."""
        hit = self.items.get(key)
        return None if hit is None else hit[0]

    def put(self, key: str, value: object, until: float | None = None) -> None:
        """Keep ``value`` for ``ttl`` seconds, or only until ``until`` if that is sooner."""
        if self.ttl <= 0:
            return
        if len(self.items) > 10_000:
            self.items.clear()
        expires = time.monotonic() + self.ttl
        self.items[key] = (expires if until is None else min(expires, until), value)

    def clear(self) -> None:
        self.items.clear()


def normalize_username(username: str) -> str:
    return username.strip().lower()


def _principal(
    user: _UserState, scopes: frozenset[str], method: AuthMethod, cred: str
) -> Principal:
    return Principal(
        id=user.id,
        roles=frozenset({user.role}),
        scopes=scopes & ROLE_SCOPES.get(user.role, frozenset()),
        auth_method=method,
        name=user.username,
        credential_id=cred,
    )


class AuthService:
    """Everything that issues or checks credentials, around one :class:`AuthStore`."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        *,
        keyring: KeyRing | None = None,
        throttle: LoginThrottle | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        # Authentication events go to the audit log; by default written inline (these methods
        # run off the event loop); the API hands over its background log instead.
        self.audit = audit or AuditLog(db, settings.audit, background=False)
        self.auth = settings.auth
        self.db = db
        self.store = AuthStore(db)
        self.keyring = keyring or KeyRing.from_settings(settings)
        self.codec = TokenCodec(self.auth, self.keyring)
        self.throttle: LoginThrottle = throttle or MemoryLoginThrottle(
            self.auth.login_max_failures_per_account,
            self.auth.login_max_failures_per_ip,
            self.auth.login_failure_window_s,
        )
        self._passwords: Passwords | None = None
        self._passwords_lock = threading.Lock()
        self._users = _Cache(self.auth.principal_cache_s)
        self._keys = _Cache(self.auth.principal_cache_s)
        self._clients = _Cache(self.auth.principal_cache_s)
        # access token jti -> its finished Principal, never kept longer than the user (and
        # client) state it was built from, so the revocation bound stays principal_cache_s
        self._tokens = _Cache(self.auth.principal_cache_s)
        self._touched: dict[str, float] = {}
        #: concurrent cache misses of one credential share one database lookup (API only)
        self.lookups: SingleFlight[Principal] = SingleFlight()
        #: background refreshes of cached user states (see :meth:`user_refresh_due`)
        self.user_lookups: SingleFlight[object] = SingleFlight()
        # Bumped by invalidate(): a lookup that read the database before a change made through
        # this service does not put its (stale) answer back into the cleared caches.
        self._generation = 0
        # An entry with less than this left is refreshed ahead (in the background, by the API)
        # so busy credentials never all miss at once; it still expires at its time.
        self._refresh_ahead_s = self.auth.principal_cache_s / 2

    @property
    def passwords(self) -> Passwords:
        """Built on first use (it hashes a dummy password, ~100 ms at default cost)."""
        with self._passwords_lock:
            if self._passwords is None:
                self._passwords = Passwords(self.auth)
            return self._passwords

    def _audit(
        self,
        verb: str,
        resource_type: str,
        resource_id: str | None = None,
        *,
        outcome: Outcome = "ok",
        principal_id: str | None = None,
        **detail: Any,
    ) -> None:
        self.audit.event(
            verb,
            resource_type,
            resource_id,
            outcome=outcome,
            principal_id=principal_id,
            detail={k: v for k, v in detail.items() if v is not None},
        )

    def invalidate(self) -> None:
        """Forget cached users, keys and clients (after a change)."""
        self._generation += 1
        self._users.clear()
        self._keys.clear()
        self._clients.clear()
        self._tokens.clear()

    # ------------------------------------------------------------------ accounts

    def create_user(self, username: str, password: str, role: str = "user") -> User:
        name = normalize_username(username)
        if not USERNAME_RE.match(name):
            raise BadRequest("user name: 1-64 of a-z 0-9 . _ @ - (starting with a letter or digit)")
        if role not in ROLES:
            raise BadRequest(f"role must be one of {', '.join(ROLES)}")
        try:
            check_password_policy(password)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        user = User(
            id=credentials.new_id(),
            username=name,
            password_hash=self.passwords.hash(password),
            role=role,
            disabled=False,
        )
        try:
            added = self.store.add_user(user)
        except CallAnnotateError as exc:
            self._audit("create", "user", outcome="failed", username=name, error=exc.code)
            raise
        self._audit("create", "user", added.id, username=name, role=role)
        return added

    def set_password(self, username: str, password: str) -> User:
        try:
            check_password_policy(password)
        except ValueError as exc:
            raise BadRequest(str(exc)) from exc
        user = self.store.require_user_by_name(normalize_username(username))
        updated = self._end_sessions(user.id, password_hash=self.passwords.hash(password))
        self._audit("set_password", "user", user.id, username=user.username)
        return updated

    def set_disabled(self, username: str, disabled: bool) -> User:
        user = self.store.require_user_by_name(normalize_username(username))
        updated = self.store.update_user(user.id, disabled=disabled)
        if disabled:
            self.store.revoke_user_tokens(user.id)
        self.invalidate()
        self._audit("disable" if disabled else "enable", "user", user.id, username=user.username)
        return updated

    def _user_state(self, user_id: str) -> _UserState | None:
        cached = self._users.get(user_id)
        if isinstance(cached, _UserState):
            return cached
        return self.refresh_user_state(user_id)

    def refresh_user_state(self, user_id: str) -> _UserState | None:
        """Read the user's state from the database into the cache (``None``: no such user).

        The API calls this ahead of the cached entry's expiry (:meth:`user_refresh_due`): a
        user disabled meanwhile is refused as soon as the tokens cached from the old state
        expire, which is never later than that state's own expiry."""
        generation = self._generation
        user = self.store.get_user(user_id)
        if user is None:
            self._users.drop(user_id)
            return None
        state = _user_state_of(user)
        if generation == self._generation:
            self._users.put(user_id, state)
        return state

    def user_active(self, user_id: str) -> bool:
        """True when ``user_id`` is an account that is not disabled (from the cache)."""
        state = self._user_state(user_id)
        return state is not None and not state.disabled

    def user_refresh_due(self, user_id: str) -> bool:
        """True when the cached state of ``user_id`` expires within half the cache time."""
        until = self._users.deadline(user_id)
        return until is not None and until - time.monotonic() < self._refresh_ahead_s

    # ------------------------------------------------------------------ password flow

    def login(
        self, username: str, password: str, ip: str | None, scope: str | None = None
    ) -> TokenPair:
        """OAuth2 password grant. The same error for an unknown user and a wrong password."""
        account = normalize_username(username)[:64]
        wait = self.throttle.retry_after(account, ip)
        if wait is not None:
            self._audit("login", "auth", outcome="denied", username=account, reason="throttled")
            observe_auth_failure("throttled")
            raise TooManyAttempts(wait)
        requested = self._requested(scope)
        user = self.store.user_by_name(account) if USERNAME_RE.match(account) else None
        ok, new_hash = self.passwords.verify(password, user.password_hash if user else None)
        if user is None or not ok or user.disabled:
            self.throttle.failed(account, ip)
            logger.info("login failed", extra={"user.name": account, "client.ip": ip})
            reason = "disabled" if user is not None and ok else "invalid credentials"
            self._audit("login", "auth", outcome="failed", username=account, reason=reason)
            observe_auth_failure("disabled" if reason == "disabled" else "bad_password")
            raise InvalidGrant("invalid user name or password")
        self.throttle.succeeded(account)
        if new_hash is not None:
            self.store.update_user(user.id, password_hash=new_hash)
        scopes = grantable(user.role, requested)
        if not scopes:  # none of the requested scopes: a token that could do nothing
            raise InvalidScope(f"scope(s) not allowed: {format_scopes(requested)}")
        family = credentials.new_id()
        pair = self._issue_pair(user, scopes, family_id=family)
        self._audit(
            "login",
            "auth",
            user.id,
            principal_id=user.id,
            username=user.username,
            session=family,
            scopes=format_scopes(scopes),
        )
        return pair

    def _requested(self, scope: str | None) -> frozenset[str]:
        requested = parse_scopes(scope)
        bad = unknown_scopes(requested)
        if bad:
            raise InvalidScope(f"unknown scope(s): {format_scopes(bad)}")
        return requested

    def _issue_pair(
        self, user: User | _UserState, scopes: frozenset[str], family_id: str
    ) -> TokenPair:
        access, _ = self.codec.encode(user.id, scopes)
        refresh = credentials.new_refresh_token()
        self.store.add_refresh_token(self._refresh_row(user.id, refresh, scopes, family_id))
        return TokenPair(access, self.auth.access_token_ttl_s, scopes, refresh)

    def _refresh_row(
        self, user_id: str, token: str, scopes: frozenset[str], family_id: str
    ) -> RefreshToken:
        issued = utcnow()
        return RefreshToken(
            id=credentials.new_id(),
            token_hash=credentials.digest(token),
            family_id=family_id,
            user_id=user_id,
            issued_at=issued,
            expires_at=issued + timedelta(seconds=self.auth.refresh_token_ttl_s),
            scopes=format_scopes(scopes),
        )

    def refresh(self, refresh_token: str) -> TokenPair:
        """Rotate: the old token is spent, a new one in the same family comes back.

        Presenting a spent (or revoked) token revokes the whole family: whoever holds the
        newest token of that login must log in again too.
        """
        row = self.store.refresh_token_by_hash(credentials.digest(refresh_token))
        if row is None:
            self._audit("refresh", "auth", outcome="failed", reason="unknown refresh token")
            observe_auth_failure("bad_refresh")
            raise InvalidGrant("invalid refresh token")
        if row.used_at is not None or row.revoked_at is not None:
            self._reuse(row)
        if row.expires_at <= utcnow():
            self._audit(
                "refresh",
                "auth",
                row.user_id,
                outcome="failed",
                principal_id=row.user_id,
                session=row.family_id,
                reason="expired",
            )
            observe_auth_failure("expired")
            raise InvalidGrant("refresh token expired")
        user = self._user_state(row.user_id)
        if user is None or user.disabled:
            self._audit(
                "refresh",
                "auth",
                row.user_id,
                outcome="failed",
                principal_id=row.user_id,
                session=row.family_id,
                reason="user disabled",
            )
            observe_auth_failure("disabled")
            raise InvalidGrant("invalid refresh token")
        scopes = grantable(user.role, parse_scopes(row.scopes))
        access, _ = self.codec.encode(user.id, scopes)
        token = credentials.new_refresh_token()
        new = self._refresh_row(user.id, token, scopes, row.family_id)
        if not self.store.rotate_refresh_token(row.id, new):
            self._reuse(row)  # lost a race with another use of the same token
        self._audit("refresh", "auth", user.id, principal_id=user.id, session=row.family_id)
        return TokenPair(access, self.auth.access_token_ttl_s, scopes, token)

    def _reuse(self, row: RefreshToken) -> NoReturn:
        revoked = self.store.revoke_family(row.family_id)
        if row.revoked_at is None or revoked:
            logger.warning(
                "refresh token reused; family revoked",
                extra={"user.id": row.user_id, "family": row.family_id},
            )
        self._audit(
            "refresh_reuse",
            "auth",
            row.user_id,
            outcome="denied",
            principal_id=row.user_id,
            session=row.family_id,
            revoked_tokens=revoked,
        )
        observe_auth_failure("refresh_reuse")
        raise InvalidGrant("invalid refresh token")

    def _end_sessions(self, user_id: str, password_hash: str | None = None) -> User:
        """Every login of ``user_id`` ends (with its new ``password_hash``, in the same
        update): its refresh tokens are revoked and the access tokens issued before this
        second refused (``iat`` has whole seconds)."""
        user = self.store.update_user(
            user_id,
            password_hash=password_hash,
            tokens_valid_after=datetime.fromtimestamp(int(time.time()), UTC),
        )
        self.store.revoke_user_tokens(user_id)
        self.invalidate()
        return user

    def logout_everywhere(self, user_id: str) -> None:
        """End every session of ``user_id`` (``POST /auth/logout-all``); API keys and OAuth2
        clients stay (they are credentials of their own)."""
        self._end_sessions(user_id)
        self._audit("logout_all", "auth", user_id, principal_id=user_id)

    def logout(self, refresh_token: str) -> bool:
        """Revoke the login (refresh family) the token belongs to; ``False`` if unknown."""
        row = self.store.refresh_token_by_hash(credentials.digest(refresh_token))
        if row is None:
            self._audit("logout", "auth", outcome="failed", reason="unknown refresh token")
            return False
        self.store.revoke_family(row.family_id)
        self._audit("logout", "auth", row.user_id, principal_id=row.user_id, session=row.family_id)
        return True

    # ------------------------------------------------------------------ client credentials

    def create_client(
        self, username: str, name: str, scopes: str | None
    ) -> tuple[OAuthClient, str]:
        name = _label(name)
        user = self.store.require_user_by_name(normalize_username(username))
        granted = self._grant_for(user.role, scopes)
        client_id, secret = credentials.new_client()
        row = OAuthClient(
            id=client_id,
            user_id=user.id,
            name=name,
            secret_hash=credentials.digest(secret),
            scopes=format_scopes(granted),
            disabled=False,
        )
        added = self.store.add_client(row)
        self._audit("create", "client", client_id, owner=user.id, name=name, scopes=row.scopes)
        return added, secret

    def set_client_disabled(self, client_id: str, disabled: bool) -> None:
        verb = "disable" if disabled else "enable"
        if not self.store.set_client_disabled(client_id, disabled):
            self._audit(verb, "client", client_id[:64], outcome="failed", reason="not found")
            raise NotFound(f"client {client_id} not found")
        self.invalidate()
        self._audit(verb, "client", client_id)

    def client_credentials(self, client_id: str, secret: str, scope: str | None) -> TokenPair:
        requested = self._requested(scope)
        found = self.store.client_with_user(client_id) if len(client_id) <= 64 else None
        if found is None:
            credentials.same_digest(secret, "0" * 64)  # same work as a real check
            self._client_failed(client_id, "unknown client")
        client, user = found
        if not credentials.same_digest(secret, client.secret_hash):
            self._client_failed(client_id, "wrong secret")
        if client.disabled or user.disabled:
            self._client_failed(client_id, "disabled")
        allowed = parse_scopes(client.scopes) & ROLE_SCOPES.get(user.role, frozenset())
        scopes = allowed if not requested else requested & allowed
        if requested and scopes != requested:
            raise InvalidScope("scope not allowed for this client")
        access, _ = self.codec.encode(user.id, scopes, client_id=client.id)
        self.store.touch_client(client.id)
        self._audit(
            "client_token",
            "auth",
            user.id,
            principal_id=user.id,
            client_id=client.id,
            scopes=format_scopes(scopes),
        )
        return TokenPair(access, self.auth.access_token_ttl_s, scopes)

    def _client_failed(self, client_id: str, reason: str) -> NoReturn:
        self._audit(
            "client_token", "auth", outcome="failed", client_id=client_id[:64], reason=reason
        )
        observe_auth_failure("disabled" if reason == "disabled" else "bad_client")
        raise InvalidClient()

    def _client_enabled(self, client_id: str) -> bool:
        cached = self._clients.get(client_id)
        if isinstance(cached, bool):
            return cached
        found = self.store.client_with_user(client_id)
        enabled = found is not None and not found[0].disabled
        self._clients.put(client_id, enabled)
        return enabled

    # ------------------------------------------------------------------ API keys

    def _grant_for(
        self, role: str, scopes: str | None, within: frozenset[str] | None = None
    ) -> frozenset[str]:
        requested = self._requested(scopes)
        if scopes is not None and not requested:  # asked for no scope: not "all of them"
            raise InvalidScope(
                "name at least one scope (read, write, admin); leave scopes out for all "
                "your role allows"
            )
        allowed = ROLE_SCOPES.get(role, frozenset())
        if within is not None:
            allowed = allowed & within
        granted = allowed if not requested else requested & allowed
        if requested and granted != requested:
            raise InvalidScope(f"scope(s) not allowed: {format_scopes(requested - granted)}")
        return granted

    def create_api_key(
        self, user_id: str, name: str, scopes: str | None, within: frozenset[str] | None = None
    ) -> tuple[ApiKey, str]:
        """A new key for the user; the plaintext is returned once and never stored."""
        name = _label(name)
        user = self.store.get_user(user_id)
        if user is None:
            raise NotFound(f"user {user_id} not found")
        granted = self._grant_for(user.role, scopes, within)
        prefix, key = credentials.new_api_key()
        row = ApiKey(
            id=credentials.new_id(),
            user_id=user.id,
            name=name,
            prefix=prefix,
            key_hash=credentials.digest(key),
            scopes=format_scopes(granted),
        )
        added = self.store.add_api_key(row)
        self._audit(
            "create",
            "apikey",
            row.id,
            principal_id=current_actor() or user.id,  # the API: the user creates their own
            owner=user.id,
            name=name,
            scopes=row.scopes,
        )
        return added, key

    def revoke_api_key(self, key_id: str, principal: Principal | None = None) -> None:
        """Revoke ``key_id``; a non-admin ``principal`` may only revoke its own (else 404)."""
        key = self.store.get_api_key(key_id) if len(key_id) <= 64 else None
        actor = principal.id if principal is not None else None
        if key is None or (principal is not None and not principal.can_access(key.user_id)):
            self._audit(
                "revoke",
                "apikey",
                key_id[:64],
                outcome="failed",
                principal_id=actor,
                reason="not found",
            )
            raise NotFound(f"API key {key_id} not found")
        self.store.revoke_api_key(key_id)
        self.invalidate()
        self._audit("revoke", "apikey", key_id, principal_id=actor, owner=key.user_id)

    # ------------------------------------------------------------------ principals

    def principal_from_jwt(self, token: str) -> Principal:
        """The caller of an access token; refused when invalid, or its user/client disabled."""
        return self.principal_from_claims(self.codec.decode(token))

    def principal_from_claims(self, claims: AccessClaims) -> Principal:
        """The caller of verified ``claims`` (may read the database); ``expires_at`` is the
        token's ``exp``."""
        principal = self._claims_principal(claims, cached_only=False)
        assert principal is not None
        return self._remember_token(claims, principal)

    def cached_principal(self, claims: AccessClaims) -> Principal | None:
        """The caller of verified ``claims`` from the cache, ``None`` on a miss.

        The hot path of every JWT request: the finished principal of a token is kept by its
        ``jti`` until the cached user (and client) state it came from expires, so a hit is one
        dictionary lookup and the revocation bound is unchanged (``auth.principal_cache_s``).
        """
        hit = self._tokens.get(claims.jti)
        if isinstance(hit, Principal) and hit.id == claims.subject:
            return hit
        principal = self._claims_principal(claims, cached_only=True)
        if principal is None:
            return None
        return self._remember_token(claims, principal)

    def _remember_token(self, claims: AccessClaims, principal: Principal) -> Principal:
        principal = replace(principal, expires_at=claims.expires_at)
        until = self._users.deadline(claims.subject)
        if claims.client_id is not None:
            client_until = self._clients.deadline(claims.client_id)
            until = None if until is None or client_until is None else min(until, client_until)
        if until is not None:  # no cached state (cache off): nothing to bound it by
            self._tokens.put(claims.jti, principal, until)
        return principal

    def _claims_principal(self, claims: AccessClaims, *, cached_only: bool) -> Principal | None:
        user = self._users.get(claims.subject)
        if not isinstance(user, _UserState):
            if cached_only:
                return None
            user = self._user_state(claims.subject)
        if user is None or user.disabled:
            raise AuthenticationFailed(reason="bad_token" if user is None else "disabled")
        if user.tokens_after is not None and claims.issued_at < user.tokens_after:
            raise AuthenticationFailed(reason="revoked_token")
        if claims.client_id is None:
            return _principal(user, claims.scopes, "password", claims.jti)
        enabled = self._clients.get(claims.client_id)
        if not isinstance(enabled, bool):
            if cached_only:
                return None
            enabled = self._client_enabled(claims.client_id)
        if not enabled:
            raise AuthenticationFailed(reason="disabled")
        return _principal(user, claims.scopes, "client", claims.client_id)

    def cached_api_key(self, key: str) -> Principal | None:
        """The principal for ``key`` from the cache when no last-used write is due."""
        hit = self._keys.get(credentials.digest(key))
        if not isinstance(hit, Principal) or self._touch_due(hit.credential_id or ""):
            return None
        return hit

    def cached_api_key_entry(self, key: str) -> tuple[Principal, bool] | None:
        """``(principal, refresh due)`` for ``key`` from the cache, ``None`` on a miss.

        The hot path of every API-key request. A refresh is due when the entry expires
        within half the cache time or a last-used write is due: the API then runs
        :meth:`refresh_api_key` in the background and keeps answering from the entry until
        it expires (never longer: the revocation bound stays ``auth.principal_cache_s``)."""
        hit = self._keys.entry(credentials.digest(key))
        if hit is None or not isinstance(hit[1], Principal):
            return None
        principal = hit[1]
        due = hit[0] - time.monotonic() < self._refresh_ahead_s or self._touch_due(
            principal.credential_id or ""
        )
        return principal, due

    def refresh_api_key(self, key: str) -> Principal:
        """:meth:`principal_from_api_key`; a refused key is dropped from the cache at once."""
        try:
            return self.principal_from_api_key(key)
        except AuthenticationFailed:
            self._keys.drop(credentials.digest(key))
            raise

    def _touch_due(self, key_id: str) -> bool:
        last = self._touched.get(key_id)
        return last is None or time.monotonic() - last >= self.auth.api_key_touch_interval_s

    def principal_from_api_key(self, key: str) -> Principal:
        """The caller of an API key; records the last-used time (at most once a minute)."""
        generation = self._generation
        prefix = credentials.api_key_prefix(key)
        found = self.store.api_key_by_prefix(prefix) if prefix else None
        if found is None:
            raise AuthenticationFailed(reason="bad_key")
        row, user = found
        if not credentials.same_digest(key, row.key_hash):
            raise AuthenticationFailed(reason="bad_key")
        if row.revoked_at is not None or user.disabled:
            raise AuthenticationFailed(reason="disabled" if user.disabled else "revoked_key")
        state = _user_state_of(user)
        principal = _principal(state, parse_scopes(row.scopes), "api_key", row.id)
        if self._touch_due(row.id):
            if len(self._touched) > 10_000:
                self._touched.clear()
            self._touched[row.id] = time.monotonic()
            self.store.touch_api_key(row.id)
        if generation == self._generation:  # no change through this service meanwhile
            self._keys.put(credentials.digest(key), principal)
        return principal

    def has_users(self) -> bool:
        return self.store.count_users() > 0

    def require_scope(self, principal: Principal, scope: str) -> None:
        if not principal.has_scope(scope):
            raise PermissionDenied(f"this credential lacks the '{scope}' scope")
