"""Signed report-viewer links with authentication on (reports/links.py): a browser opens the
report page and its audio with no header, and a link opens nothing else."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import httpx
import pytest
from reports_sample import completed_job

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "api"))

from apiseed import tone_wav
from authtesting import Accounts, auth_settings

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, AuthSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.pipeline.types import Annotation
from callannotate.security.audit import AuditLog
from callannotate.security.links import LinkClaims, sign_link

AUDIO_SRC = re.compile(r'<audio[^>]*\ssrc="([^"]+)"')


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[tuple[httpx.AsyncClient, Accounts]]:
    settings = auth_settings(tmp_path / "data", tmp_path / "store.db")
    accounts = Accounts.create(settings)
    app = accounts.attach(create_app(settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        c.app = app  # type: ignore[attr-defined]
        yield c, accounts
    accounts.service.db.dispose()


def _queue(client: httpx.AsyncClient) -> FileQueue:
    queue: FileQueue = client.app.state.queue  # type: ignore[attr-defined]
    return queue


@pytest.fixture
def alice_job(
    secured: tuple[httpx.AsyncClient, Accounts], ru_annotation: Annotation, tmp_path: Path
) -> str:
    client, accounts = secured
    wav = tone_wav(tmp_path / "call.wav")
    return completed_job(_queue(client), ru_annotation, wav, owner=accounts.ids["alice"])


async def _link(client: httpx.AsyncClient, accounts: Accounts, user: str, job_id: str) -> str:
    r = await client.post(f"/jobs/{job_id}/report-link", headers=accounts.headers(user))
    assert r.status_code == 200, r.text
    assert r.headers["cache-control"] == "private, no-store"
    body = r.json()
    drift = time.time() + 900 - _parse_time(body["expires_at"])
    assert -5 < drift < 5  # auth.report_link_ttl_s, 15 min by default
    assert body["url"].startswith(f"/jobs/{job_id}/report?")
    return str(body["url"])


def _parse_time(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _with(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {**dict(parse_qsl(parts.query)), **changes}
    return parts.path + "?" + "&".join(f"{k}={v}" for k, v in query.items())


async def test_the_report_opens_with_a_link_and_no_header(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str
) -> None:
    client, accounts = secured
    assert (await client.get(f"/jobs/{alice_job}/report")).status_code == 401
    url = await _link(client, accounts, "alice", alice_job)
    r = await client.get(url)
    assert r.status_code == 200, r.text
    assert r.headers["referrer-policy"] == "no-referrer"
    assert "media-src 'self'" in r.headers["content-security-policy"]
    assert "Анна Петрова" in r.text
    # the player's audio URL is signed too, so it works without a header, Range included
    audio = AUDIO_SRC.search(r.text)
    assert audio is not None
    audio_url = audio.group(1).replace("&amp;", "&")
    assert audio_url.startswith(f"/jobs/{alice_job}/audio?") and "sig=" in audio_url
    full = await client.get(audio_url)
    assert full.status_code == 200 and full.headers["content-type"] == "audio/wav"
    part = await client.get(audio_url, headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == full.content[100:200]
    head = await client.head(audio_url)
    assert head.status_code == 200 and head.content == b""
    assert head.headers["content-length"] == str(len(full.content))


async def test_an_admin_gets_a_link_and_another_user_gets_404(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str
) -> None:
    client, accounts = secured
    r = await client.post(f"/jobs/{alice_job}/report-link", headers=accounts.headers("bob"))
    assert r.status_code == 404 and r.json()["error"] == "not_found"
    r = await client.post(f"/jobs/{alice_job}/report-link")
    assert r.status_code == 401
    url = await _link(client, accounts, "root", alice_job)
    assert (await client.get(url)).status_code == 200


async def test_tampered_expired_and_other_job_links_are_refused(
    secured: tuple[httpx.AsyncClient, Accounts],
    alice_job: str,
    ru_annotation: Annotation,
    tmp_path: Path,
) -> None:
    client, accounts = secured
    url = await _link(client, accounts, "alice", alice_job)
    other = completed_job(
        _queue(client), ru_annotation, tone_wav(tmp_path / "b.wav"), owner=accounts.ids["alice"]
    )
    sig = dict(parse_qsl(urlsplit(url).query))["sig"]
    exp = dict(parse_qsl(urlsplit(url).query))["exp"]
    service = accounts.service
    expired = sign_link(
        service.keyring, LinkClaims("report", alice_job, accounts.ids["alice"], int(time.time()))
    )
    refused = [
        url.replace(alice_job, other),  # another job of the same owner
        _with(url, exp=str(int(exp) + 3600)),  # a longer life
        _with(url, sig=("A" if sig[0] != "A" else "B") + sig[1:]),  # another signature
        _with(url, kid="k-unknown"),
        _with(url, sig=""),
        f"/jobs/{alice_job}/report?" + "&".join(f"{k}={v}" for k, v in expired.items()),
        # the report link does not open the audio, nor the audio link the report
        url.replace("/report?", "/audio?"),
    ]
    for bad in refused:
        r = await client.get(bad)
        assert r.status_code == 401, bad
        assert r.json()["error"] == "unauthorized" and r.json()["request_id"]
        assert r.headers["www-authenticate"].startswith("Bearer")
    page = (await client.get(url)).text
    audio = AUDIO_SRC.search(page)
    assert audio is not None
    audio_url = audio.group(1).replace("&amp;", "&")
    r = await client.get(audio_url.replace("/audio?", "/report?"))
    assert r.status_code == 401


async def test_a_link_opens_no_other_route(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str
) -> None:
    client, accounts = secured
    query = urlsplit(await _link(client, accounts, "alice", alice_job)).query
    for path in ("", "/result", "/export", "/export?format=pdf&"):
        target = f"/jobs/{alice_job}{path}" + ("" if path.endswith("&") else "?") + query
        r = await client.get(target)
        assert r.status_code == 401, target
    r = await client.post(f"/jobs/{alice_job}/report-link?{query}")
    assert r.status_code == 401
    r = await client.delete(f"/jobs/{alice_job}?{query}")
    assert r.status_code == 401
    assert _queue(client).get(alice_job).state.value == "completed"


async def test_a_link_stops_when_the_job_changes_hands_or_the_owner_is_disabled(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str
) -> None:
    client, accounts = secured
    url = await _link(client, accounts, "alice", alice_job)
    queue = _queue(client)
    _, path, job = queue._find(alice_job)
    queue._save(path, job.model_copy(update={"owner": accounts.ids["bob"]}))
    assert (await client.get(url)).status_code == 401
    queue._save(path, job)
    assert (await client.get(url)).status_code == 200
    accounts.service.set_disabled("alice", True)
    assert (await client.get(url)).status_code == 401


async def test_reads_through_a_link_are_audited_as_the_owner(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str
) -> None:
    client, accounts = secured
    url = await _link(client, accounts, "alice", alice_job)
    assert (await client.get(url)).status_code == 200
    assert (await client.get(_with(url, sig="x" * 43))).status_code == 401
    audit = client.app.state.audit  # type: ignore[attr-defined]
    assert isinstance(audit, AuditLog)
    audit.flush()
    r = await client.get(
        "/audit", params={"action": "job.read_report"}, headers=accounts.headers("root")
    )
    items = r.json()["items"]
    ok = [i for i in items if i["outcome"] == "ok"]
    denied = [i for i in items if i["outcome"] == "denied"]
    assert len(ok) == 1 and len(denied) == 1
    assert ok[0]["principal_id"] == accounts.ids["alice"]
    assert ok[0]["resource_id"] == alice_job
    assert ok[0]["detail"]["query"]["sig"] == "[redacted]"
    assert denied[0]["principal_id"] is None
    r = await client.get(
        "/audit", params={"action": "job.report_link"}, headers=accounts.headers("root")
    )
    assert r.json()["items"][0]["principal_id"] == accounts.ids["alice"]


async def test_with_auth_off_the_link_is_the_plain_path(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False),
        auth=AuthSettings(enabled=False),
    )
    app = create_app(settings)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        from reports_sample import russian_annotation

        jid = completed_job(app.state.queue, russian_annotation(), tone_wav(tmp_path / "c.wav"))
        r = await c.post(f"/jobs/{jid}/report-link")
        assert r.status_code == 200
        assert r.json() == {"url": f"/jobs/{jid}/report", "expires_at": None}
        page = await c.get(r.json()["url"])
        assert page.status_code == 200 and f'src="/jobs/{jid}/audio"' in page.text
        # stray link parameters change nothing while auth is off
        assert (await c.get(f"/jobs/{jid}/audio?sig=bogus")).status_code == 200


async def test_with_a_public_url_the_link_is_absolute(tmp_path: Path) -> None:
    """The link was a bare path even with ``api.public_url`` set ("base URL used in links"):
    an integration that mails it had to know where the service is published."""
    settings = auth_settings(tmp_path / "data", tmp_path / "store.db")
    settings.api.public_url = "https://calls.example.com/annotate/"
    accounts = Accounts.create(settings)
    app = accounts.attach(create_app(settings))
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        from reports_sample import russian_annotation

        wav = tone_wav(tmp_path / "c.wav")
        jid = completed_job(app.state.queue, russian_annotation(), wav, owner=accounts.ids["alice"])
        r = await c.post(f"/jobs/{jid}/report-link", headers=accounts.headers("alice"))
        assert r.status_code == 200, r.text
        url = r.json()["url"]
        assert url.startswith(f"https://calls.example.com/annotate/jobs/{jid}/report?exp=")
        # behind the proxy that strips /annotate the signed path opens the page
        page = await c.get(url.removeprefix("https://calls.example.com/annotate"))
        assert page.status_code == 200, page.text
    accounts.service.db.dispose()


def test_the_link_lifetime_is_bounded() -> None:
    assert AuthSettings().report_link_ttl_s == 900
    for bad in (5, 86401):
        with pytest.raises(ValueError):
            AuthSettings(report_link_ttl_s=bad)


async def test_a_link_request_reads_the_job_once(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The job a link was verified against serves the route too: the player's many Range
    requests each read the job record once, not twice."""
    client, accounts = secured
    queue = _queue(client)
    page_url = await _link(client, accounts, "alice", alice_job)
    reads: list[str] = []
    real_get = queue.get

    def counting_get(job_id: str) -> object:
        reads.append(job_id)
        return real_get(job_id)

    monkeypatch.setattr(queue, "get", counting_get)
    page = await client.get(page_url)
    assert page.status_code == 200 and reads == [alice_job]
    audio = AUDIO_SRC.search(page.text)
    assert audio is not None
    reads.clear()
    part = await client.get(audio.group(1).replace("&amp;", "&"), headers={"Range": "bytes=0-9"})
    assert part.status_code == 206 and reads == [alice_job]
    reads.clear()  # a header credential reads it once as before
    r = await client.get(f"/jobs/{alice_job}/audio", headers=accounts.headers("alice"))
    assert r.status_code == 200 and reads == [alice_job]


@pytest.mark.parametrize(
    "changes",
    [
        {"exp": "²"},  # a Unicode digit int() refuses: was a 500 (UnboundLocalError)
        {"exp": "١٧٠٠٠٠٠٠٠٠"},
        {"exp": "9" * 5000},
        {"exp": "-1"},
        {"kid": "k" * 5000},
        {"sig": "é" * 43},
        {"sig": "A" * 5000},
    ],
)
async def test_malformed_link_parameters_are_refused_with_401(
    secured: tuple[httpx.AsyncClient, Accounts], alice_job: str, changes: dict[str, str]
) -> None:
    client, accounts = secured
    url = await _link(client, accounts, "alice", alice_job)
    for target in (url, url.replace("/report?", "/audio?")):
        r = await client.get(_with(target, **{k: quote(v) for k, v in changes.items()}))
        assert r.status_code == 401, (target, r.text)
        assert r.json()["error"] == "unauthorized"
