"""Real CardDAV servers for tests and benchmarks: Radicale (htpasswd auth) and Xandikos.

Each runs as a subprocess of this Python on 127.0.0.1 and a free port, with a bounded wait for
it to answer; ``stop()`` ends it by its pid. ``restart()`` starts it again on the same port and
storage (the fault tests stop a server mid-way and bring it back).
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from callannotate.config import ContactsSettings, Settings
from local_servers import free_port

START_TIMEOUT_S = 30.0


class DavServer:
    kind = ""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = root / f"{self.kind}.log"
        root.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    username = "alice"
    password = "s3cret-pass"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(), stdout=log, stderr=subprocess.STDOUT, cwd=self.root
            )
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} exited: {self.log.read_text()[-2000:]}")
            try:
                httpx.request("OPTIONS", self.url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{self.kind} did not answer within {START_TIMEOUT_S} s")

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)

    def restart(self) -> None:
        self.stop()
        self.start()


class Radicale(DavServer):
    kind = "radicale"

    def command(self) -> list[str]:
        htpasswd = self.root / "htpasswd"
        htpasswd.write_text(f"{self.username}:{self.password}\nbob:bob-pass\n")
        return [
            sys.executable,
            "-m",
            "radicale",
            "--server-hosts",
            f"127.0.0.1:{self.port}",
            "--auth-type",
            "htpasswd",
            "--auth-htpasswd-filename",
            str(htpasswd),
            "--auth-htpasswd-encryption",
            "plain",
            "--storage-filesystem-folder",
            str(self.root / "storage"),
            "--logging-level",
            "warning",
        ]


class Xandikos(DavServer):
    """Xandikos has no authentication of its own (it sits behind a proxy): any credentials."""

    kind = "xandikos"
    username = "user"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "xandikos.web",
            "-l",
            "127.0.0.1",
            "--port",
            str(self.port),
            "-d",
            str(self.root / "storage"),
            "--defaults",
        ]


@contextlib.contextmanager
def running_radicale(root: Path) -> Iterator[Radicale]:
    """Radicale started in ``root`` with its user's ``contacts`` address book made; stopped
    on exit."""
    from callannotate.contacts.davclient import CardDAVClient

    server = Radicale(root)
    server.start()
    try:
        with CardDAVClient(server.url, server.username, server.password) as client:
            client.create_addressbook(f"/{server.username}/contacts/", "Contacts")
        yield server
    finally:
        server.stop()


@contextlib.contextmanager
def running_xandikos(root: Path) -> Iterator[Xandikos]:
    """Xandikos started in ``root``; stopped on exit."""
    server = Xandikos(root)
    server.start()
    try:
        yield server
    finally:
        server.stop()


#: ``contacts.allowed_hosts`` for the test servers, which listen on the loopback address
LOCAL_SERVERS = ["127.0.0.1"]


def make_settings(tmp_path: Path, **contacts: object) -> Settings:
    """Settings for a contacts service in tests: a quick breaker and short timeouts."""
    return Settings(
        data_dir=tmp_path / "data",
        contacts=ContactsSettings(
            breaker_failures=1,
            breaker_reset_s=0.01,
            timeout_s=5,
            **{"allowed_hosts": LOCAL_SERVERS, **contacts},  # type: ignore[arg-type]
        ),
    )
