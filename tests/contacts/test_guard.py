"""Where the CardDAV client may connect (contacts/guard.py): real HTTP servers on loopback
addresses stand for the service's own network; a request that is refused must never reach
them, redirects included."""

from __future__ import annotations

import ssl
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from carddav_servers import LOCAL_SERVERS, Radicale

from callannotate.config import ContactsSettings, Settings
from callannotate.contacts import davclient as dav
from callannotate.contacts.guard import contacts_policy
from callannotate.contacts.service import ContactsService
from callannotate.db.engine import Database
from callannotate.db.migrate import upgrade_database
from callannotate.errors import Unprocessable

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from local_servers import free_port
from tls_certs import make_certs


class Recorder:
    """An HTTP server on ``host`` that records each request's path and ``Host`` header and
    answers ``redirect`` (a 307 to it) when set, else a 404."""

    def __init__(self, host: str, tls: ssl.SSLContext | None = None) -> None:
        self.seen: list[tuple[str, str]] = []
        self.redirect: str | None = None
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                recorder.seen.append((self.path, self.headers.get("Host", "")))
                if recorder.redirect is not None:
                    self.send_response(307)
                    self.send_header("Location", recorder.redirect)
                else:
                    self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_PROPFIND = _answer

            def log_message(self, *_args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((host, free_port()), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.url = f"{'https' if tls else 'http'}://{host}:{self.port}/"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def recorders() -> Iterator[tuple[Recorder, Recorder]]:
    allowed, private = Recorder("127.0.0.1"), Recorder("127.0.0.2")
    yield allowed, private
    allowed.close()
    private.close()


def _client(url: str, allowed_hosts: list[str]) -> dav.CardDAVClient:
    return dav.CardDAVClient(url, "u", "p", timeout=5, policy=contacts_policy(allowed_hosts))


def test_a_loopback_or_metadata_target_is_refused_before_any_request(
    recorders: tuple[Recorder, Recorder],
) -> None:
    allowed, _ = recorders
    for url in (allowed.url, f"http://localhost:{allowed.port}/", "http://169.254.169.254/"):
        with _client(url, []) as client, pytest.raises(dav.TargetNotAllowed) as refused:
            client.discover()
        assert "contacts.allowed_hosts" in str(refused.value)
    assert allowed.seen == []


def test_a_redirect_to_a_refused_address_is_not_followed(
    recorders: tuple[Recorder, Recorder],
) -> None:
    allowed, private = recorders
    allowed.redirect = private.url + "secret"
    with _client(allowed.url, LOCAL_SERVERS) as client, pytest.raises(dav.TargetNotAllowed):
        client.discover()
    assert allowed.seen  # asked, and answered with the redirect
    assert private.seen == []


def test_an_allowed_address_is_reached_by_name_with_the_name_as_host(
    recorders: tuple[Recorder, Recorder],
) -> None:
    """``localhost`` passes because every address it resolves to is allowed; the request
    goes to that checked address and still names the host."""
    allowed, _ = recorders
    url = f"http://localhost:{allowed.port}/book/"
    with _client(url, ["127.0.0.1", "::1"]) as client:
        assert client.request("PROPFIND", url).status_code == 404
    assert allowed.seen == [("/book/", f"localhost:{allowed.port}")]


def test_tls_checks_the_certificate_against_the_name_not_the_address(tmp_path: Path) -> None:
    """The request goes to the checked address, but TLS names the host (SNI) and verifies the
    certificate for it: a certificate for ``localhost`` only is accepted at ``localhost``."""
    certs = make_certs(tmp_path / "tls", hosts=("localhost",))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certs.cert_file, certs.key_file)
    server = Recorder("127.0.0.1", tls=context)
    try:
        url = f"https://localhost:{server.port}/book/"
        with dav.CardDAVClient(
            url,
            "u",
            "p",
            timeout=5,
            verify=certs.client_context(),
            policy=contacts_policy(["127.0.0.1", "::1"]),
        ) as client:
            assert client.request("PROPFIND", url).status_code == 404
    finally:
        server.close()
    assert server.seen == [("/book/", f"localhost:{server.port}")]


def test_connect_answers_422_naming_the_setting(tmp_path: Path, radicale: Radicale) -> None:
    def service(allowed_hosts: list[str]) -> ContactsService:
        settings = Settings(
            data_dir=tmp_path / "data", contacts=ContactsSettings(allowed_hosts=allowed_hosts)
        )
        db = Database.from_settings(settings)
        upgrade_database(db)
        return ContactsService(settings, db)

    refusing = service([])
    with pytest.raises(Unprocessable, match=r"127\.0\.0\.1 is a private.*contacts\.allowed_hosts"):
        refusing.connect("alice", radicale.url, radicale.username, radicale.password)
    assert refusing.accounts("alice") == []
    refusing.db.dispose()
    allowing = service(LOCAL_SERVERS)
    account = allowing.connect("alice", radicale.url, radicale.username, radicale.password)
    assert [a.id for a in allowing.accounts("alice")] == [account.id]
    allowing.db.dispose()
