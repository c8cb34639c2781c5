"""``authenticate(conn, settings, service)``: where the credential is read from."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from starlette.requests import HTTPConnection

from callannotate.security.authenticate import authenticate
from callannotate.security.errors import AuthenticationFailed
from callannotate.security.service import AuthService
from callannotate.security.store import AuthStore


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


# ---------------------------------------------------------------- caches, revocation, herds

CACHE_S = 0.4


def _service_with_cache(service: AuthService, cache_s: float) -> AuthService:
    """Another service on the same database (another process, e.g. the CLI, or the API)
    whose principal cache lasts ``cache_s`` seconds."""
    auth = service.settings.auth.model_copy(update={"principal_cache_s": cache_s})
    settings = service.settings.model_copy(update={"auth": auth})
    return AuthService(settings, service.db, keyring=service.keyring)


def _bearer_conn(token: str) -> HTTPConnection:
    return _conn({"Authorization": f"Bearer {token}"})


async def test_user_disabled_by_another_process_is_refused_within_the_cache_time(
    service: AuthService, creds: tuple[str, str]
) -> None:
    access, key = creds
    api = _service_with_cache(service, CACHE_S)
    cli = service  # the CLI's own service: its changes do not clear the API's cache
    first = await authenticate(_bearer_conn(access), api.settings, api)
    assert first is not None and first.expires_at is not None
    assert await authenticate(_conn({"X-API-Key": key}), api.settings, api) is not None
    cached_at = time.monotonic()
    # a second token of the same user first seen while the user state is cached: its
    # cached principal must not outlive that state
    await asyncio.sleep(CACHE_S / 2)
    second = cli.login("alice", "correct horse", None).access_token
    assert await authenticate(_bearer_conn(second), api.settings, api) is not None
    cli.set_disabled("alice", True)
    await asyncio.sleep(max(0.0, cached_at + CACHE_S + 0.05 - time.monotonic()))
    for conn in (_bearer_conn(access), _bearer_conn(second), _conn({"X-API-Key": key})):
        with pytest.raises(AuthenticationFailed):
            await authenticate(conn, api.settings, api)


async def test_revoked_api_key_is_refused_within_the_cache_time(
    service: AuthService, creds: tuple[str, str]
) -> None:
    _, key = creds
    api = _service_with_cache(service, CACHE_S)
    principal = await authenticate(_conn({"X-API-Key": key}), api.settings, api)
    assert principal is not None and principal.credential_id is not None
    service.revoke_api_key(principal.credential_id)
    await asyncio.sleep(CACHE_S + 0.05)
    with pytest.raises(AuthenticationFailed):
        await authenticate(_conn({"X-API-Key": key}), api.settings, api)


async def test_changes_made_in_the_same_process_apply_at_once(
    service: AuthService, creds: tuple[str, str]
) -> None:
    access, key = creds
    api = _service_with_cache(service, 3600)
    assert await authenticate(_bearer_conn(access), api.settings, api) is not None
    assert await authenticate(_conn({"X-API-Key": key}), api.settings, api) is not None
    api.set_disabled("alice", True)  # through the API's own service: the caches are dropped
    for conn in (_bearer_conn(access), _conn({"X-API-Key": key})):
        with pytest.raises(AuthenticationFailed):
            await authenticate(conn, api.settings, api)


class _CountingStore:
    """The real store, counting the principal lookups that reach the database."""

    def __init__(self, store: AuthStore) -> None:
        self._store = store
        self.calls = {"get_user": 0, "api_key_by_prefix": 0}

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if name in self.calls:

            def counted(*args: Any) -> Any:
                self.calls[name] += 1
                time.sleep(0.02)  # a slow database: every waiter arrives while it runs
                return attribute(*args)

            return counted
        return attribute


async def test_concurrent_cache_misses_share_one_lookup(
    service: AuthService, creds: tuple[str, str]
) -> None:
    """200 requests in flight when the cache expires make one query, not 200."""
    access, key = creds
    api = _service_with_cache(service, CACHE_S)
    store = _CountingStore(api.store)
    api.store = store  # type: ignore[assignment]
    for headers, counter in (
        ({"Authorization": f"Bearer {access}"}, "get_user"),
        ({"X-API-Key": key}, "api_key_by_prefix"),
    ):
        principals = await asyncio.gather(
            *(authenticate(_conn(headers), api.settings, api) for _ in range(50))
        )
        assert {p.name for p in principals if p is not None} == {"alice"}
        assert len(principals) == 50 and all(p is not None for p in principals)
        assert store.calls[counter] == 1, store.calls
    assert api.lookups.in_flight() == 0


async def _refreshes_done() -> None:
    from callannotate.security import authenticate as module

    while module._refreshes:
        await asyncio.gather(*module._refreshes)


async def test_busy_credentials_are_refreshed_ahead_without_waiting(
    service: AuthService, creds: tuple[str, str]
) -> None:
    """Past half the cache time a request is still answered from the cache and starts one
    background lookup; after the entry's original expiry no request waits for the database."""
    access, key = creds
    api = _service_with_cache(service, 1.0)
    store = _CountingStore(api.store)
    api.store = store  # type: ignore[assignment]
    for headers, counter in (
        ({"Authorization": f"Bearer {access}"}, "get_user"),
        ({"X-API-Key": key}, "api_key_by_prefix"),
    ):
        assert await authenticate(_conn(headers), api.settings, api) is not None
        assert store.calls[counter] == 1
        await asyncio.sleep(0.6)  # past half the cache time
        started = time.monotonic()
        results = await asyncio.gather(
            *(authenticate(_conn(headers), api.settings, api) for _ in range(20))
        )
        assert all(p is not None and p.name == "alice" for p in results)
        assert time.monotonic() - started < 0.015  # none waited for the (20 ms) lookup
        await _refreshes_done()
        assert store.calls[counter] == 2, store.calls  # one refresh for the 20 requests
        await asyncio.sleep(0.5)  # past the first entry's expiry: the refreshed one answers
        assert await authenticate(_conn(headers), api.settings, api) is not None
        assert store.calls[counter] == 2, store.calls


async def test_a_refresh_that_finds_the_key_revoked_drops_it_at_once(
    service: AuthService, creds: tuple[str, str]
) -> None:
    _, key = creds
    api = _service_with_cache(service, 2.0)
    principal = await authenticate(_conn({"X-API-Key": key}), api.settings, api)
    assert principal is not None and principal.credential_id is not None
    service.revoke_api_key(principal.credential_id)  # by another process: api keeps its cache
    await asyncio.sleep(1.05)  # past half the cache time, well before the expiry
    # still within the cache time: answered from the cache, and a refresh starts
    assert await authenticate(_conn({"X-API-Key": key}), api.settings, api) is not None
    await _refreshes_done()
    with pytest.raises(AuthenticationFailed):  # refused before the entry's own expiry
        await authenticate(_conn({"X-API-Key": key}), api.settings, api)


class _PausingStore:
    """The real store; the first key lookup returns only once ``proceed`` is set."""

    def __init__(self, store: AuthStore) -> None:
        self._store = store
        self.read_done = threading.Event()
        self.proceed = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def api_key_by_prefix(self, prefix: str) -> Any:
        found = self._store.api_key_by_prefix(prefix)
        if not self.read_done.is_set():
            self.read_done.set()
            assert self.proceed.wait(5)
        return found


async def test_a_lookup_older_than_a_change_is_not_cached(
    service: AuthService, creds: tuple[str, str]
) -> None:
    """A key revoked through the service while a lookup of it runs is refused afterwards:
    the lookup's answer (read before the change) is not put back into the cleared cache."""
    _, key = creds
    api = _service_with_cache(service, 3600)
    store = _PausingStore(api.store)
    api.store = store  # type: ignore[assignment]
    lookup = asyncio.ensure_future(authenticate(_conn({"X-API-Key": key}), api.settings, api))
    assert await asyncio.to_thread(store.read_done.wait, 5)
    row = store._store.api_key_by_prefix(key.split("_")[1])
    assert row is not None
    api.revoke_api_key(row[0].id)  # through the service: clears its caches
    store.proceed.set()
    assert await lookup is not None  # it read the key before the change
    with pytest.raises(AuthenticationFailed):
        await authenticate(_conn({"X-API-Key": key}), api.settings, api)


async def test_concurrent_misses_of_a_bad_key_all_fail(service: AuthService) -> None:
    api = _service_with_cache(service, CACHE_S)
    bad = "ca_0123456789ab_" + "x" * 43
    results = await asyncio.gather(
        *(authenticate(_conn({"X-API-Key": bad}), api.settings, api) for _ in range(20)),
        return_exceptions=True,
    )
    assert all(isinstance(r, AuthenticationFailed) for r in results)


# ---------------------------------------------------------------- metrics


def _failures(reason: str) -> float:
    value = REGISTRY.get_sample_value("callannotate_auth_failures_total", {"reason": reason})
    return value or 0.0


async def test_refusals_are_counted_by_reason(service: AuthService, creds: tuple[str, str]) -> None:
    access, key = creds
    user = service.store.user_by_name("alice")
    assert user is not None
    expired = service.codec.encode(user.id, frozenset({"read"}), ttl_s=-60)[0]
    _, revoked = service.create_api_key(user.id, "old", None)
    service.revoke_api_key(service.store.api_key_by_prefix(revoked.split("_")[1])[0].id)  # type: ignore[index]
    cases = {
        "bad_token": {"Authorization": f"Bearer {access[:-4]}AAAA"},  # tampered signature
        "expired": {"Authorization": f"Bearer {expired}"},
        "bad_key": {"X-API-Key": key[:-4] + "zzzz"},
        "revoked_key": {"X-API-Key": revoked},
    }
    for reason, headers in cases.items():
        before = _failures(reason)
        with pytest.raises(AuthenticationFailed) as info:
            await authenticate(_conn(headers), service.settings, service)
        assert info.value.reason == reason
        assert _failures(reason) == before + 1, reason
    # a token from before a password change
    stale = service.codec.encode(user.id, frozenset({"read"}), now=time.time() - 2)[0]
    service.set_password("alice", "another long password")
    before = _failures("revoked_token")
    with pytest.raises(AuthenticationFailed) as info:
        await authenticate(_conn({"Authorization": f"Bearer {stale}"}), service.settings, service)
    assert info.value.reason == "revoked_token"
    assert _failures("revoked_token") == before + 1
    # a disabled user: JWT and API key
    access = service.login("alice", "another long password", None).access_token
    service.set_disabled("alice", True)
    before = _failures("disabled")
    for headers in ({"Authorization": f"Bearer {access}"}, {"X-API-Key": key}):
        with pytest.raises(AuthenticationFailed):
            await authenticate(_conn(headers), service.settings, service)
    assert _failures("disabled") == before + 2
    # anonymous is not a failure here (the route decides); a malformed header is
    before = _failures("bad_token")
    assert await authenticate(_conn({}), service.settings, service) is None
    with pytest.raises(AuthenticationFailed):
        await authenticate(_conn({"Authorization": "Basic eDp5"}), service.settings, service)
    assert _failures("bad_token") == before + 1
