"""``/auth``: OAuth2 tokens (password, refresh, client credentials), logout, API keys.

These routes work whatever ``auth.enabled`` says (they always need a real account's
credential, never the local admin of an auth-off laptop). Token responses carry
``Cache-Control: no-store`` (RFC 6749 §5.1); errors use the usual body with the OAuth2 error
code in ``error`` (``invalid_grant``, ``invalid_client``, ``invalid_scope``,
``unsupported_grant_type``).
"""

from __future__ import annotations

import base64
import binascii
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Annotated, Any, Literal

import anyio
from fastapi import APIRouter, Depends, Form, Query, Response
from pydantic import BaseModel, Field
from starlette.requests import HTTPConnection

from callannotate.api.audit_middleware import audit_log_for
from callannotate.api.errors import error_responses
from callannotate.config import Settings
from callannotate.db.engine import Database
from callannotate.db.models import ApiKey
from callannotate.errors import BadRequest, NotFound
from callannotate.security.authenticate import authenticate
from callannotate.security.errors import (
    AuthenticationFailed,
    InsufficientScope,
    PermissionDenied,
)
from callannotate.security.principal import Principal
from callannotate.security.scopes import READ, WRITE, format_scopes, parse_scopes
from callannotate.security.service import AuthService, InvalidClient, TokenPair

router = APIRouter(prefix="/auth", tags=["auth"])
logger = logging.getLogger(__name__)

_service_lock = threading.Lock()
NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}


def build_auth_service(settings: Settings) -> AuthService:
    """The service on the configured database, its schema upgraded first."""
    from callannotate.db.migrate import upgrade_database  # alembic: only when first needed

    db = Database.from_settings(settings)
    upgrade_database(db)
    return AuthService(settings, db)


def shared_auth_service(state: Any) -> AuthService:
    """``state.auth_service`` (an app's state), built (database migrated) on first use.

    Blocking: call it from a worker thread (the app's lifespan builds it at start).
    """
    with _service_lock:
        service = getattr(state, "auth_service", None)
        if service is None:
            service = build_auth_service(state.settings)
            service.audit = audit_log_for(state)  # the app's background audit writer
            state.auth_service = service
    assert isinstance(service, AuthService)
    return service


NO_USERS_HINT = (
    "authentication is on and there are no user accounts yet: create the first admin with "
    "`callannotate users create NAME --role admin`"
)


async def open_auth(state: Any) -> None:
    """At the app's start (``auth.enabled``): build the service (migrating the database) and
    say how to create the first admin when there is no account yet."""
    if not state.settings.auth.enabled:
        return
    service = await anyio.to_thread.run_sync(shared_auth_service, state)
    if not await anyio.to_thread.run_sync(service.has_users):
        logger.warning(NO_USERS_HINT)


def close_auth(state: Any) -> None:
    """At the app's end: close the store's connections (the engine is disposed)."""
    service = getattr(state, "auth_service", None)
    if isinstance(service, AuthService):
        service.db.dispose()


async def get_auth_service(conn: HTTPConnection) -> AuthService:
    """``app.state.auth_service``, built (and the database migrated) on first use."""
    service = getattr(conn.app.state, "auth_service", None)
    if isinstance(service, AuthService):
        return service
    return await anyio.to_thread.run_sync(shared_auth_service, conn.app.state)


AuthServiceDep = Annotated[AuthService, Depends(get_auth_service)]


def password_limiter(conn: HTTPConnection) -> anyio.CapacityLimiter:
    """At most one argon2 computation per CPU at a time (each takes 64 MiB and ~0.3 s).

    Without it a burst of logins would fill anyio's shared 40-thread pool (and 2.5 GiB of
    memory) and stall every other ``to_thread`` call of the API.
    """
    limiter = getattr(conn.app.state, "password_limiter", None)
    if not isinstance(limiter, anyio.CapacityLimiter):
        limiter = anyio.CapacityLimiter(os.cpu_count() or 2)
        conn.app.state.password_limiter = limiter
    return limiter


async def require_principal(conn: HTTPConnection, service: AuthServiceDep) -> Principal:
    """A real authenticated user (these routes need one even while ``auth.enabled`` is off)."""
    principal = await authenticate(conn, service.settings, service)
    if principal is None:
        raise AuthenticationFailed("authentication required", error="invalid_request")
    return principal


AuthenticatedPrincipal = Annotated[Principal, Depends(require_principal)]


def _scoped(scope: str) -> Callable[[Principal], Awaitable[Principal]]:
    async def scoped(principal: AuthenticatedPrincipal) -> Principal:
        if not principal.has_scope(scope):
            raise InsufficientScope(scope)
        return principal

    scoped.__name__ = f"require_{scope}_account"
    return scoped


#: A real account's credential holding ``read`` / ``write`` (the /auth key routes).
AccountReader = Annotated[Principal, Depends(_scoped(READ))]
AccountWriter = Annotated[Principal, Depends(_scoped(WRITE))]


# --------------------------------------------------------------------------- schemas


class TokenResponse(BaseModel):
    access_token: str = Field(description="The access JWT: send as 'Authorization: Bearer'.")
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds until the access token expires.")
    scope: str = Field(description="Granted scopes, space-separated.")
    refresh_token: str | None = Field(
        None, description="Single-use token for POST /auth/refresh (not for client credentials)."
    )

    @classmethod
    def of(cls, pair: TokenPair) -> TokenResponse:
        return cls(
            access_token=pair.access_token,
            expires_in=pair.expires_in,
            scope=format_scopes(pair.scopes),
            refresh_token=pair.refresh_token,
        )


class RefreshRequest(BaseModel):
    refresh_token: str = Field(min_length=1, max_length=512)


class ApiKeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=100, description="What the key is for.")
    scopes: list[str] | None = Field(
        None, description="Scopes (read, write, admin); default: all your role allows."
    )


class ApiKeyInfo(BaseModel):
    id: str
    name: str
    prefix: str = Field(description="Identifies the key: it starts with 'ca_<prefix>_'.")
    scopes: list[str]
    owner: str = Field(description="Id of the user the key acts for.")
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None

    @classmethod
    def of(cls, row: ApiKey) -> ApiKeyInfo:
        return cls(
            id=row.id,
            name=row.name,
            prefix=row.prefix,
            scopes=sorted(parse_scopes(row.scopes)),
            owner=row.user_id,
            created_at=row.created_at,
            last_used_at=row.last_used_at,
            revoked_at=row.revoked_at,
        )


class ApiKeyCreated(ApiKeyInfo):
    key: str = Field(description="The key itself. Shown once: it is stored only as a digest.")


class Me(BaseModel):
    id: str
    name: str | None
    roles: list[str]
    scopes: list[str]
    auth_method: str


# --------------------------------------------------------------------------- tokens


def _basic_client(conn: HTTPConnection) -> tuple[str, str] | None:
    header = conn.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidClient() from exc
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        raise InvalidClient()
    return client_id, secret


class UnsupportedGrantType(BadRequest):
    code = "unsupported_grant_type"


@router.post(
    "/token",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    summary="OAuth2 token endpoint: password, refresh_token or client_credentials grant",
    responses=error_responses(400, 401, 429),
)
async def token(
    conn: HTTPConnection,
    response: Response,
    service: AuthServiceDep,
    grant_type: Annotated[str, Form(max_length=64)] = "password",
    username: Annotated[str | None, Form(max_length=256)] = None,
    password: Annotated[str | None, Form(max_length=1024)] = None,
    scope: Annotated[str | None, Form(max_length=256)] = None,
    client_id: Annotated[str | None, Form(max_length=128)] = None,
    client_secret: Annotated[str | None, Form(max_length=256)] = None,
    refresh_token: Annotated[str | None, Form(max_length=512)] = None,
) -> TokenResponse:
    response.headers.update(NO_STORE)
    if grant_type == "password":
        if not username or password is None:
            raise BadRequest("username and password are required")
        ip = conn.client.host if conn.client else None
        pair = await anyio.to_thread.run_sync(
            service.login, username, password, ip, scope, limiter=password_limiter(conn)
        )
    elif grant_type == "refresh_token":
        if not refresh_token:
            raise BadRequest("refresh_token is required")
        pair = await anyio.to_thread.run_sync(service.refresh, refresh_token)
    elif grant_type == "client_credentials":
        basic = _basic_client(conn)
        cid, secret = basic if basic else (client_id, client_secret)
        if not cid or not secret:
            raise InvalidClient()
        pair = await anyio.to_thread.run_sync(service.client_credentials, cid, secret, scope)
    else:
        raise UnsupportedGrantType(f"grant_type {grant_type!r} is not supported")
    return TokenResponse.of(pair)


@router.post(
    "/refresh",
    response_model=TokenResponse,
    response_model_exclude_none=True,
    summary="Swap a refresh token for a new access token and a new refresh token",
    responses=error_responses(400),
)
async def refresh(
    body: RefreshRequest, response: Response, service: AuthServiceDep
) -> TokenResponse:
    response.headers.update(NO_STORE)
    pair = await anyio.to_thread.run_sync(service.refresh, body.refresh_token)
    return TokenResponse.of(pair)


@router.post(
    "/logout",
    status_code=204,
    summary="Revoke the login the refresh token belongs to (all its refresh tokens)",
)
async def logout(body: RefreshRequest, service: AuthServiceDep) -> Response:
    await anyio.to_thread.run_sync(service.logout, body.refresh_token)
    return Response(status_code=204)


@router.post(
    "/logout-all",
    status_code=204,
    summary="Sign out everywhere: revoke all your logins and the access tokens issued so far",
    description=(
        "Needs the `write` scope. Every refresh token of yours is revoked and every access "
        "token issued before now is refused from the next request (other API processes: within "
        "`auth.principal_cache_s`), this request's own included. API keys and OAuth2 "
        "clients are credentials of their own and stay: revoke them separately."
    ),
    responses=error_responses(401, 403),
)
async def logout_all(principal: AccountWriter, service: AuthServiceDep) -> Response:
    await anyio.to_thread.run_sync(service.logout_everywhere, principal.id)
    return Response(status_code=204)


@router.get(
    "/me",
    response_model=Me,
    summary="Who the credential belongs to",
    responses=error_responses(401),
)
async def me(principal: AuthenticatedPrincipal) -> Me:
    return Me(
        id=principal.id,
        name=principal.name,
        roles=sorted(principal.roles),
        scopes=sorted(principal.scopes),
        auth_method=principal.auth_method,
    )


# --------------------------------------------------------------------------- API keys


@router.post(
    "/apikeys",
    status_code=201,
    response_model=ApiKeyCreated,
    summary="Create a personal API key (the key is in this response only)",
    responses=error_responses(400, 401, 403, 404),
)
async def create_api_key(
    body: ApiKeyCreate, principal: AccountWriter, service: AuthServiceDep
) -> ApiKeyCreated:
    scopes = " ".join(body.scopes) if body.scopes is not None else None
    row, key = await anyio.to_thread.run_sync(
        lambda: service.create_api_key(principal.id, body.name, scopes, principal.scopes)
    )
    return ApiKeyCreated(**ApiKeyInfo.of(row).model_dump(), key=key)


@router.get(
    "/apikeys",
    response_model=list[ApiKeyInfo],
    summary="Your API keys (an admin may pass ?user=<id> or ?all=true)",
    responses=error_responses(401, 403),
)
async def list_api_keys(
    principal: AccountReader,
    service: AuthServiceDep,
    user: str | None = None,
    all_users: Annotated[bool, Query(alias="all")] = False,
) -> list[ApiKeyInfo]:
    others = all_users or (user is not None and user != principal.id)
    if others and not principal.is_admin:
        raise PermissionDenied("only an admin may list other users' keys")
    owner = None if all_users else (user or principal.id)
    rows = await anyio.to_thread.run_sync(service.store.list_api_keys, owner)
    return [ApiKeyInfo.of(r) for r in rows]


@router.delete(
    "/apikeys/{key_id}",
    status_code=204,
    summary="Revoke an API key (yours; an admin may revoke any)",
    responses=error_responses(401, 404),
)
async def revoke_api_key(
    key_id: str, principal: AccountWriter, service: AuthServiceDep
) -> Response:
    if len(key_id) > 64:
        raise NotFound("API key not found")
    await anyio.to_thread.run_sync(service.revoke_api_key, key_id, principal)
    return Response(status_code=204)
