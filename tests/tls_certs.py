"""Certificates for TLS tests, made by ``trustme`` (a throwaway CA; nothing leaves the test).

Shared by tests/api/test_tls.py and tests/events/test_redis_tls.py, which put ``tests/`` on
``sys.path`` and import it as ``tls_certs``.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme


@dataclass(frozen=True)
class Certs:
    ca: trustme.CA
    ca_file: Path
    cert_file: Path  # server certificate chain (PEM)
    key_file: Path  # its private key (PEM)

    def client_context(self) -> ssl.SSLContext:
        """A client context that trusts only this CA (and checks the host name)."""
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_certs(folder: Path, hosts: tuple[str, ...] = ("127.0.0.1", "localhost")) -> Certs:
    """A CA and a server certificate for ``hosts``, written as PEM files under ``folder``."""
    folder.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert(*hosts)
    ca_file = folder / "ca.pem"
    cert_file = folder / "server.pem"
    key_file = folder / "server.key"
    ca.cert_pem.write_to_path(str(ca_file))
    server.cert_chain_pems[0].write_to_path(str(cert_file))
    for extra in server.cert_chain_pems[1:]:
        extra.write_to_path(str(cert_file), append=True)
    server.private_key_pem.write_to_path(str(key_file))
    key_file.chmod(0o600)
    return Certs(ca, ca_file, cert_file, key_file)
