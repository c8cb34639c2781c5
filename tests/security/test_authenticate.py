"""``authenticate(conn, settings, service)``: where the credential is read from."""

from __future__ import annotations

import pytest
from starlette.requests import HTTPConnection

from callannotate.security.authenticate import authenticate
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.service import AuthService


def _conn(headers: dict[str, str], *, websocket: bool = False, query: str = "") -> HTTPConnection:
    scope = {
        "type": "websocket" if websocket else "http",
        "headers": [(k.lower().encode(), v.encode()) for k, v in headers.items()],
        "query_string": query.encode(),
        "path": "/",
    }
    return HTTPConnection(scope)


@pytest.fixture
def creds(service: AuthService) -> tuple[str, str]:
    user = service.create_user("alice", "correct horse")
    access = service.login("alice", "correct horse", None).access_token
    _, key = service.create_api_key(user.id, "script", None)
    return access, key


async def test_anonymous_is_none(service: AuthService) -> None:
    assert await authenticate(_conn({}), service.settings, service) is None


async def test_http_credentials(service: AuthService, creds: tuple[str, str]) -> None:
    access, key = creds
    for headers, method in (
        ({"Authorization": f"Bearer {access}"}, "password"),
        ({"Authorization": f"bearer {key}"}, "api_key"),
        ({"X-API-Key": key}, "api_key"),
    ):
        principal = await authenticate(_conn(headers), service.settings, service)
        assert principal is not None and principal.name == "alice"
        assert principal.auth_method == method
    # the second time the JWT path answers from the cache (no thread, no query)
    again = await authenticate(
        _conn({"Authorization": f"Bearer {access}"}), service.settings, service
    )
    assert again is not None and again.name == "alice"


async def test_query_token_only_on_websockets(service: AuthService, creds: tuple[str, str]) -> None:
    access, _ = creds
    ws = _conn({}, websocket=True, query=f"access_token={access}")
    principal = await authenticate(ws, service.settings, service)
    assert principal is not None and principal.name == "alice"
    assert (
        await authenticate(_conn({}, query=f"access_token={access}"), service.settings, service)
        is None
    )
    proto = _conn({"Sec-WebSocket-Protocol": f"callannotate.v1, bearer, {access}"}, websocket=True)
    principal = await authenticate(proto, service.settings, service)
    assert principal is not None and principal.name == "alice"


@pytest.mark.parametrize(
    "headers",
    [
        {"Authorization": "Basic YWxpY2U6cHc="},
        {"Authorization": "Bearer"},
        {"Authorization": "Bearer not.a.jwt"},
        {"Authorization": "Bearer ca_0123456789ab_nope"},
        {"X-API-Key": "ca_zz_nope"},
        {"Authorization": "Bearer " + "a" * 5000},
    ],
)
async def test_bad_credentials_raise(service: AuthService, headers: dict[str, str]) -> None:
    with pytest.raises(AuthenticationFailed) as info:
        await authenticate(_conn(headers), service.settings, service)
    assert info.value.status_code == 401 and "Bearer" in info.value.headers["WWW-Authenticate"]
