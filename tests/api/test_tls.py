"""HTTPS: a real ``callannotate serve --ssl-certfile/--ssl-keyfile`` process, certificates
made by ``trustme``, a real TLS client (httpx trusting only the test CA).

* the server answers over TLS with HSTS (and the other security headers);
* a client that does not trust the CA, and a plain-HTTP client, both fail on that port;
* a missing, unreadable or mismatched file is one clear error before anything starts.
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from local_servers import callannotate_command, free_port

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from callannotate.api.headers import HSTS
from callannotate.api.tls import TlsConfigError, check_tls_files, uvicorn_tls_options
from callannotate.cli import main
from callannotate.config import ApiSettings
from tls_certs import Certs, make_certs

pytestmark = pytest.mark.integration

START_TIMEOUT_S = 60.0


@dataclass
class TlsServer:
    port: int
    certs: Certs
    process: subprocess.Popen[bytes]
    log: Path

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.certs.client_context(), timeout=10)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsServer]:
    root = tmp_path_factory.mktemp("tls")
    certs = make_certs(root / "certs")
    port = free_port()
    env = {**os.environ, "CALLANNOTATE_DATA_DIR": str(root / "data")}
    log = root / "server.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [
                *callannotate_command(),
                "serve",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--no-workers",
                "--ssl-certfile",
                str(certs.cert_file),
                "--ssl-keyfile",
                str(certs.key_file),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    srv = TlsServer(port, certs, process, log)
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        with srv.client() as client:
            while True:
                try:
                    if client.get("/health").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(log.read_text(errors="replace")[-3000:])
                time.sleep(0.2)
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_https_with_the_test_ca_answers_with_hsts(server: TlsServer) -> None:
    with server.client() as client:
        for path in ("/health", "/jobs", "/openapi.json", "/no-such-page"):
            response = client.get(path)
            assert response.url.scheme == "https"
            assert response.headers["strict-transport-security"] == HSTS, path
            assert response.headers["x-content-type-options"] == "nosniff"
            assert response.headers["x-frame-options"] == "DENY"
        assert client.get("/health").json()["status"] == "ok"


def test_the_connection_is_tls_with_the_configured_certificate(server: TlsServer) -> None:
    context = server.certs.client_context()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        assert tls.version() in {"TLSv1.2", "TLSv1.3"}
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    served = x509.load_der_x509_certificate(der)
    served_file = x509.load_pem_x509_certificate(server.certs.cert_file.read_bytes())
    ca = x509.load_pem_x509_certificate(server.certs.ca.cert_pem.bytes())
    assert served == served_file
    assert served.issuer == ca.subject


def test_a_client_that_does_not_trust_the_ca_is_refused(server: TlsServer) -> None:
    other = trustme.CA()
    context = ssl.create_default_context()
    other.configure_trust(context)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{server.url}/health", verify=context, timeout=10)


def test_plain_http_to_the_tls_port_fails(server: TlsServer) -> None:
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=10)


# --------------------------------------------------------------------------- bad settings


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("certs"))


def _serve_error(capsys: pytest.CaptureFixture[str], *args: str) -> str:
    code = main(["serve", "--host", "127.0.0.1", "--port", "1", "--no-workers", *args])
    assert code == 2
    err = capsys.readouterr().err
    assert err.startswith("callannotate: error: ")
    assert "Traceback" not in err
    return err


def test_serve_names_a_missing_certificate(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.pem"
    err = _serve_error(capsys, "--ssl-certfile", str(missing), "--ssl-keyfile", str(certs.key_file))
    assert "ssl_certfile" in err and str(missing) in err and "does not exist" in err


def test_serve_names_a_missing_key(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    missing = tmp_path / "nope.key"
    err = _serve_error(
        capsys, "--ssl-certfile", str(certs.cert_file), "--ssl-keyfile", str(missing)
    )
    assert "ssl_keyfile" in err and str(missing) in err


def test_serve_wants_both_files(certs: Certs, capsys: pytest.CaptureFixture[str]) -> None:
    err = _serve_error(capsys, "--ssl-certfile", str(certs.cert_file))
    assert "ssl_keyfile" in err and "not set" in err


def test_a_key_of_another_certificate_is_refused(
    certs: Certs, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = make_certs(tmp_path / "other")
    err = _serve_error(
        capsys, "--ssl-certfile", str(certs.cert_file), "--ssl-keyfile", str(other.key_file)
    )
    assert "do not load together" in err


def test_a_folder_or_garbage_is_refused(certs: Certs, tmp_path: Path) -> None:
    with pytest.raises(TlsConfigError, match="is not a file"):
        check_tls_files(ApiSettings(ssl_certfile=tmp_path, ssl_keyfile=certs.key_file))
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(TlsConfigError, match="do not load together"):
        check_tls_files(ApiSettings(ssl_certfile=garbage, ssl_keyfile=certs.key_file))


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_an_unreadable_key_is_refused(certs: Certs, tmp_path: Path) -> None:
    key = tmp_path / "locked.key"
    key.write_bytes(certs.key_file.read_bytes())
    key.chmod(0)
    with pytest.raises(TlsConfigError, match="not readable"):
        check_tls_files(ApiSettings(ssl_certfile=certs.cert_file, ssl_keyfile=key))


def test_an_encrypted_key_needs_its_password(certs: Certs, tmp_path: Path) -> None:
    key = serialization.load_pem_private_key(certs.key_file.read_bytes(), password=None)
    encrypted = tmp_path / "encrypted.key"
    encrypted.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"s3cret"),
        )
    )
    api = ApiSettings(ssl_certfile=certs.cert_file, ssl_keyfile=encrypted)
    with pytest.raises(TlsConfigError, match="ssl_keyfile_password"):
        check_tls_files(api)
    api = ApiSettings(
        ssl_certfile=certs.cert_file, ssl_keyfile=encrypted, ssl_keyfile_password="s3cret"
    )
    options = uvicorn_tls_options(api)
    assert options["ssl_keyfile_password"] == "s3cret"
    assert options["ssl_certfile"] == str(certs.cert_file)


def test_tls_is_off_without_files() -> None:
    assert uvicorn_tls_options(ApiSettings()) == {}
