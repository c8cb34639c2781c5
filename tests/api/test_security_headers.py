"""What the API serves is typed by content, never by a client's name; docs work offline;
``OPTIONS`` lists every method; error bodies leak no server path (issue 15)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from callannotate.api.headers import API_DEFAULT, HSTS, ROUTE_POLICIES
from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue

SCRIPT = b"<html><body><script>fetch('/jobs').then(r => r.text()).then(alert)</script>"


async def _upload(
    client: httpx.AsyncClient, data: bytes, filename: str, content_type: str
) -> dict[str, Any]:
    response = await client.post("/jobs", files={"file": (filename, data, content_type)})
    assert response.status_code == 202, response.text
    job: dict[str, Any] = response.json()
    return job


async def test_audio_with_a_page_appended_is_served_as_audio_not_html(
    client: httpx.AsyncClient, audio_dir: Path, queue: FileQueue
) -> None:
    """Issue 15.1: a WAV with <script> appended, uploaded as x.html, is stored and served
    as audio/wav with nosniff and a sandboxing CSP, so the script can never run."""
    polyglot = (audio_dir / "tone.wav").read_bytes() + SCRIPT
    job = await _upload(client, polyglot, "x.html", "text/html")
    assert job["audio"]["stored_as"] == "audio.wav"
    assert queue.audio_path(job["id"]).name == "audio.wav"
    response = await client.get(f"/jobs/{job['id']}/audio")
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/wav"
    assert response.headers["x-content-type-options"] == "nosniff"
    csp = response.headers["content-security-policy"]
    assert "default-src 'none'" in csp and "sandbox" in csp
    disposition = response.headers["content-disposition"]
    assert disposition.startswith("inline;") and 'filename="x.wav"' in disposition
    assert ".html" not in disposition
    assert response.content == polyglot


async def test_mp3_named_wav_is_stored_and_served_as_mp3(
    client: httpx.AsyncClient, audio_dir: Path, queue: FileQueue
) -> None:
    """Issue 15.1: the stored name and the type come from what the file decodes as."""
    job = await _upload(client, (audio_dir / "tone.mp3").read_bytes(), "x.wav", "audio/wav")
    assert job["audio"]["stored_as"] == "audio.mp3"
    assert queue.audio_path(job["id"]).name == "audio.mp3"
    response = await client.get(f"/jobs/{job['id']}/audio")
    assert response.headers["content-type"] == "audio/mpeg"
    assert 'filename="x.mp3"' in response.headers["content-disposition"]


async def test_every_response_says_nosniff(client: httpx.AsyncClient) -> None:
    for response in (await client.get("/health"), await client.get("/jobs/nope")):
        assert response.headers["x-content-type-options"] == "nosniff"


_URL = re.compile(r"""(?:src|href)\s*=\s*["']([^"']+)["']""")


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
async def test_docs_load_nothing_from_outside(client: httpx.AsyncClient, page: str) -> None:
    """Issue 15.5: the docs pages name no http(s) asset (no CDN), and the assets they name
    are served by the service itself."""
    response = await client.get(page)
    assert response.status_code == 200
    html = response.text
    assert not re.search(r"https?://", html), re.findall(r"https?://\S+", html)
    assets = _URL.findall(html)
    assert any(a.endswith(".js") for a in assets)
    for asset in assets:
        served = await client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 1000, asset
    assert (await client.get("/openapi.json")).status_code == 200


async def test_redoc_bundle_loads_its_logo_from_the_page_not_a_cdn(
    client: httpx.AsyncClient,
) -> None:
    """Redoc's footer logo comes from cdn.redoc.ly in the installed bundle: the served bundle
    carries an inline image instead, so the page asks nothing of the outside."""
    served = await client.get("/docs/assets/redoc.standalone.js")
    assert served.status_code == 200
    assert served.headers["content-type"].startswith("text/javascript")
    assert b"cdn.redoc.ly" not in served.content
    assert b"data:image/svg+xml," in served.content


@pytest.mark.parametrize(
    ("path", "allowed"),
    [
        ("/jobs", {"GET", "POST"}),
        ("/jobs/" + "0" * 32, {"GET", "DELETE"}),
        ("/jobs/" + "0" * 32 + "/retry", {"POST"}),
        ("/voices", {"GET", "POST"}),
        ("/voices/" + "0" * 32, {"GET", "PATCH", "DELETE"}),
    ],
)
async def test_options_and_405_list_every_method(
    client: httpx.AsyncClient, path: str, allowed: set[str]
) -> None:
    """Issue 15.16: ``Allow`` names every method the path takes, not the first route's."""
    response = await client.options(path)
    assert response.status_code == 204
    assert set(response.headers["allow"].split(", ")) == allowed | {"OPTIONS"}
    response = await client.request("PUT", path)
    assert response.status_code == 405
    assert set(response.headers["allow"].split(", ")) == allowed | {"OPTIONS"}
    assert response.json()["error"] == "method_not_allowed"


async def test_error_bodies_leak_no_server_path_and_echo_little(
    client: httpx.AsyncClient, audio_dir: Path, settings: Settings
) -> None:
    """Issue 15.4: a general guard over several error bodies: none names the data folder,
    none echoes more than 64 characters of what the client sent."""
    long = "a" * 10_000
    responses = [
        await client.post("/jobs", files={"file": ("x.wav", b"not audio at all" * 64)}),
        await client.post(
            "/jobs", files={"file": ("x.m4a", (audio_dir / "truncated.m4a").read_bytes())}
        ),
        await client.post(
            "/jobs",
            files={"file": ("x.wav", (audio_dir / "tone.wav").read_bytes())},
            data={long: "1"},
        ),
        await client.get(f"/jobs/{long}"),
        await client.get(f"/jobs/{long}/audio"),
        await client.delete(f"/voices/{long}"),
        await client.get("/jobs", params={"status": long}),
        await client.get(f"/jobs/{'0' * 32}/export", params={"format": long}),
    ]
    roots = {str(settings.data_dir), str(settings.data_dir.resolve())}
    for response in responses:
        assert 400 <= response.status_code < 500, response.text[:300]
        body = response.json()
        assert set(body) == {"error", "detail", "request_id"}
        assert not any(root in body["detail"] for root in roots), body["detail"]
        assert "a" * 65 not in body["detail"], body["detail"][:200]
        assert len(body["detail"]) < 1100
    assert "…" in responses[3].json()["detail"]


# --------------------------------------------------------------------------- one middleware
# (callannotate.api.headers): the same headers on every response, whatever answered it.

COMMON_HEADERS = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}


def _directives(csp: str) -> dict[str, str]:
    parts = (part.strip().split(" ", 1) for part in csp.split(";") if part.strip())
    return {p[0]: (p[1] if len(p) > 1 else "") for p in parts}


async def test_every_response_carries_the_security_headers(
    client: httpx.AsyncClient, audio_dir: Path
) -> None:
    """Successes, errors of every kind, OPTIONS, static assets and the docs: all of them."""
    job = await _upload(client, (audio_dir / "tone.wav").read_bytes(), "a.wav", "audio/wav")
    responses = {
        "health": await client.get("/health"),
        "job": await client.get(f"/jobs/{job['id']}"),
        "audio": await client.get(f"/jobs/{job['id']}/audio"),
        "range 416": await client.get(
            f"/jobs/{job['id']}/audio", headers={"Range": "bytes=99999999-"}
        ),
        "404": await client.get("/jobs/" + "0" * 32),
        "unknown path": await client.get("/no/such/page"),
        "405": await client.request("PUT", "/jobs"),
        "422": await client.get("/jobs", params={"limit": "many"}),
        "options": await client.options("/jobs"),
        "openapi": await client.get("/openapi.json"),
        "docs": await client.get("/docs"),
        "redoc": await client.get("/redoc"),
        "asset": await client.get("/docs/assets/swagger-ui.css"),
    }
    for name, response in responses.items():
        for header, value in COMMON_HEADERS.items():
            assert response.headers.get(header) == value, (name, header)
        assert len(response.headers.get_list(header)) == 1, name  # never twice
        csp = _directives(response.headers["content-security-policy"])
        assert csp["frame-ancestors"] == "'none'", name
        assert "default-src" in csp, name
        assert "strict-transport-security" not in response.headers, name  # plain HTTP


async def test_json_and_user_bytes_policies(client: httpx.AsyncClient, audio_dir: Path) -> None:
    """The API's JSON loads nothing; what carries a caller's bytes is also sandboxed."""
    job = await _upload(client, (audio_dir / "tone.wav").read_bytes(), "a.wav", "audio/wav")
    api = _directives((await client.get("/jobs")).headers["content-security-policy"])
    assert api["default-src"] == "'none'" and "sandbox" not in api
    for path in (f"/jobs/{job['id']}/audio", f"/jobs/{'0' * 32}/export"):
        response = await client.get(path)
        csp = _directives(response.headers["content-security-policy"])
        assert csp["default-src"] == "'none'" and "sandbox" in csp, path
        assert response.headers.get_list("content-security-policy") == [
            response.headers["content-security-policy"]
        ]


async def test_docs_allow_their_own_assets_and_the_nonce_of_their_inline_script(
    client: httpx.AsyncClient,
) -> None:
    seen: set[str] = set()
    for _ in range(2):
        response = await client.get("/docs")
        csp = _directives(response.headers["content-security-policy"])
        nonces = re.findall(r"<script nonce=\"([^\"]+)\">", response.text)
        assert len(nonces) == 1 and "<script>" not in response.text
        assert csp["script-src"] == f"'self' 'nonce-{nonces[0]}'"
        assert "'unsafe-inline'" not in csp["script-src"]
        assert csp["connect-src"] == "'self'"  # "Try it out" calls the service only
        seen.add(nonces[0])
    assert len(seen) == 2  # a fresh nonce per response
    redirect = await client.get("/docs/oauth2-redirect")
    nonce = re.findall(r"<script nonce=\"([^\"]+)\">", redirect.text)
    assert nonce and f"'nonce-{nonce[0]}'" in redirect.headers["content-security-policy"]
    redoc = _directives((await client.get("/redoc")).headers["content-security-policy"])
    assert redoc["script-src"] == "'self'"  # Redoc has no inline script


async def test_hsts_only_over_https(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://test") as tls:
        response = await tls.get("/health")
        assert response.headers["strict-transport-security"] == HSTS
        assert (await tls.get("/nope")).headers["strict-transport-security"] == HSTS


async def test_every_route_in_the_policy_table_gets_its_policy(client: httpx.AsyncClient) -> None:
    """The table names real routes, found by the middleware after routing (a renamed route
    would silently fall back to the default policy)."""
    for template in ROUTE_POLICIES:
        response = await client.get(template.replace("{job_id}", "0" * 32))
        assert response.headers["content-security-policy"] != API_DEFAULT, template
