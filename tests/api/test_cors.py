"""CORS: off unless ``api.cors_origins`` lists origins (Starlette's CORSMiddleware)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import ValidationError

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings

ALLOWED = "https://crm.example.com"
OTHER = "https://evil.example.net"


async def _client(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


@pytest.fixture
async def closed(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(data_dir=tmp_path / "data", api=ApiSettings(embedded_workers=False))
    async for c in _client(settings):
        yield c


@pytest.fixture
async def open_to_crm(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    api = ApiSettings(embedded_workers=False, cors_origins=[ALLOWED + "/"], cors_max_age_s=120)
    async for c in _client(Settings(data_dir=tmp_path / "data", api=api)):
        yield c


def _preflight(origin: str, method: str = "GET") -> dict[str, str]:
    return {
        "Origin": origin,
        "Access-Control-Request-Method": method,
        "Access-Control-Request-Headers": "authorization",
    }


async def test_cors_is_off_by_default(closed: httpx.AsyncClient) -> None:
    response = await closed.get("/jobs", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert not [h for h in response.headers if h.startswith("access-control-")]
    preflight = await closed.options("/jobs", headers=_preflight(ALLOWED))
    assert not [h for h in preflight.headers if h.startswith("access-control-")]
    assert preflight.headers["x-frame-options"] == "DENY"


async def test_a_listed_origin_may_read_and_preflight(open_to_crm: httpx.AsyncClient) -> None:
    response = await open_to_crm.get("/jobs", headers={"Origin": ALLOWED})
    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == ALLOWED
    assert "access-control-allow-credentials" not in response.headers
    exposed = response.headers["access-control-expose-headers"].lower()
    assert "x-request-id" in exposed and "retry-after" in exposed
    assert response.headers["x-content-type-options"] == "nosniff"  # still every header

    preflight = await open_to_crm.options("/jobs", headers=_preflight(ALLOWED, "POST"))
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ALLOWED
    assert "POST" in preflight.headers["access-control-allow-methods"]
    assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
    assert preflight.headers["access-control-max-age"] == "120"
    assert preflight.headers["x-frame-options"] == "DENY"


async def test_an_unlisted_origin_gets_no_permission(open_to_crm: httpx.AsyncClient) -> None:
    response = await open_to_crm.get("/jobs", headers={"Origin": OTHER})
    assert response.status_code == 200  # the server answers; the browser hides the answer
    assert "access-control-allow-origin" not in response.headers
    preflight = await open_to_crm.options("/jobs", headers=_preflight(OTHER))
    assert preflight.status_code == 400
    assert "access-control-allow-origin" not in preflight.headers


async def test_errors_carry_cors_headers_for_a_listed_origin(
    open_to_crm: httpx.AsyncClient,
) -> None:
    """A page must be able to read the error body (404, 405) it caused."""
    for response in (
        await open_to_crm.get("/jobs/" + "0" * 32, headers={"Origin": ALLOWED}),
        await open_to_crm.request("PUT", "/jobs", headers={"Origin": ALLOWED}),
    ):
        assert response.status_code in {404, 405}
        assert response.headers["access-control-allow-origin"] == ALLOWED
        assert response.json()["error"]


async def test_plain_options_without_preflight_still_lists_methods(
    open_to_crm: httpx.AsyncClient,
) -> None:
    """Without Access-Control-Request-Method an OPTIONS is not a preflight: ``Allow``."""
    response = await open_to_crm.options("/jobs")
    assert response.status_code == 204
    assert set(response.headers["allow"].split(", ")) == {"GET", "POST", "OPTIONS"}


@pytest.mark.parametrize(
    "origin", ["crm.example.com", "https://crm.example.com/path", "ftp://x.example", ""]
)
def test_cors_origins_must_be_origins(origin: str) -> None:
    with pytest.raises(ValidationError, match="cors_origins"):
        ApiSettings(cors_origins=[origin])


def test_cors_origins_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLANNOTATE_API__CORS_ORIGINS", f'["{ALLOWED}", "http://localhost:3000"]')
    assert Settings().api.cors_origins == [ALLOWED, "http://localhost:3000"]
