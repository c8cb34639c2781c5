"""A cheap probe of each connected CardDAV account's server, for ``GET /ready``.

One ``PROPFIND`` with ``Depth: 0`` asking only ``resourcetype`` of the account's first
address book (its account URL when it has none yet), with the account's own credentials and
a short timeout. The answer says whether the server is up (``207``), refuses the stored
credentials (``401``/``403``), lost the book (``404``) or is down (no answer, timeout, 5xx).

Results are cached per account for ``ttl_s`` seconds, and one refresh runs at a time (the
others wait for it and read the cache), so frequent readiness probes do not turn into
CardDAV traffic: at most one request per account per ``ttl_s``. At most ``max_accounts``
accounts are probed (the oldest first); their probes run in parallel.

The probe never goes through the accounts' circuit breakers and never changes them: it only
reports. Contacts are a degradable feature, so a failing probe makes ``/ready`` say
``degraded``, not 503 (see :mod:`callannotate.observability.health`).
"""

from __future__ import annotations

import ssl
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Literal
from urllib.parse import urlsplit

import httpx
from sqlalchemy import Engine, select

from callannotate.config import ContactsSettings, Settings
from callannotate.contacts import davclient as dav
from callannotate.contacts.guard import contacts_policy
from callannotate.db.contact_models import ContactAccount, ContactBook

Status = Literal["ok", "unreachable", "auth_failed", "error"]

TTL_S = 10.0
TIMEOUT_S = 3.0
MAX_ACCOUNTS = 20
MAX_PARALLEL = 8


@dataclass(frozen=True)
class Target:
    """What the probe of one account needs (read from the contacts tables)."""

    account_id: str
    url: str
    username: str
    auth: str
    password_sealed: bytes

    @property
    def server(self) -> str:
        """``scheme://host:port`` of the URL: no path, no credentials (for ``/ready``)."""
        parts = urlsplit(self.url)
        return f"{parts.scheme}://{parts.hostname}" + (f":{parts.port}" if parts.port else "")


@dataclass(frozen=True)
class ProbeResult:
    account_id: str
    server: str
    status: Status
    detail: str
    latency_ms: float
    at: float  # monotonic time of the probe

    @property
    def ok(self) -> bool:
        return self.status == "ok"


def tls_verify(cfg: ContactsSettings) -> bool | ssl.SSLContext:
    """The TLS verification the contacts service uses (``verify_tls``, ``ca_bundle``), as a
    context built once and reused: loading the CA bundle costs ~70 ms a client otherwise."""
    if not cfg.verify_tls:
        return False
    if cfg.ca_bundle is not None:
        return ssl.create_default_context(cafile=str(cfg.ca_bundle))
    return httpx.create_ssl_context()  # httpx's default (certifi), as verify=True


def load_targets(engine: Engine, limit: int = MAX_ACCOUNTS) -> tuple[list[Target], int]:
    """The first ``limit`` accounts (oldest first) and how many there are in all."""
    first_book = (
        select(ContactBook.url)
        .where(ContactBook.account_id == ContactAccount.id)
        .order_by(ContactBook.url)
        .limit(1)
        .scalar_subquery()
    )
    query = select(
        ContactAccount.id,
        ContactAccount.url,
        first_book,
        ContactAccount.username,
        ContactAccount.auth,
        ContactAccount.password_sealed,
    ).order_by(ContactAccount.created_at, ContactAccount.id)
    with engine.connect() as conn:
        rows = list(conn.execute(query))
    targets = [
        Target(str(r[0]), str(r[2] or r[1]), str(r[3]), str(r[4]), bytes(r[5]))
        for r in rows[:limit]
    ]
    return targets, len(rows)


def probe(
    settings: Settings,
    target: Target,
    timeout_s: float,
    verify: bool | ssl.SSLContext | None = None,
) -> ProbeResult:
    """One PROPFIND (depth 0) of ``target``'s book; never raises. ``verify``: the TLS
    verification (default: :func:`tls_verify` of the settings)."""
    from callannotate.contacts.service import password_context
    from callannotate.security.secrets import unseal

    start = time.perf_counter()

    def result(status: Status, detail: str) -> ProbeResult:
        elapsed = (time.perf_counter() - start) * 1000.0
        return ProbeResult(
            target.account_id, target.server, status, detail, elapsed, time.monotonic()
        )

    try:
        password = unseal(
            settings, target.password_sealed, context=password_context(target.account_id)
        ).decode()
    except Exception:  # sealed under a retired key, or no master key: say so, never raise
        return result("error", "the stored password cannot be decrypted")
    body = dav.propfind_body("<d:resourcetype/>")
    headers = {**dav.XML_HEADERS, "Depth": "0"}
    try:
        with dav.CardDAVClient(
            target.url,
            target.username,
            password,
            auth=target.auth,
            timeout=timeout_s,
            verify=tls_verify(settings.contacts) if verify is None else verify,
            policy=contacts_policy(settings.contacts.allowed_hosts),
        ) as client:
            response = client.request("PROPFIND", client.url, content=body, headers=headers)
    except dav.AuthFailed:
        return result("auth_failed", "the server refused the stored credentials (401)")
    except dav.Unreachable as exc:
        return result("unreachable", f"unreachable: {str(exc)[:200]}")
    except dav.TargetNotAllowed as exc:
        return result("error", str(exc)[:200])
    except Exception as exc:  # a probe reports; it never fails /ready itself
        return result("error", f"{type(exc).__name__}: {str(exc)[:200]}")
    code = response.status_code
    if code == 207:
        return result("ok", "PROPFIND 207")
    if code == 403:
        return result("auth_failed", "the server refused the stored credentials (403)")
    if code == 404:
        return result("error", "the address book is gone (404)")
    return result("error", f"PROPFIND answered HTTP {code}")


class ContactsProbe:
    """Probes with a per-account cache (``ttl_s``); thread-safe."""

    def __init__(
        self,
        *,
        ttl_s: float = TTL_S,
        timeout_s: float = TIMEOUT_S,
        max_accounts: int = MAX_ACCOUNTS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl_s = ttl_s
        self.timeout_s = timeout_s
        self.max_accounts = max_accounts
        self._clock = clock
        self._cache: dict[tuple[str, str], ProbeResult] = {}
        self._targets: dict[str, tuple[float, list[Target], int]] = {}
        self._refresh = threading.Lock()
        self._verify: dict[tuple[bool, str], bool | ssl.SSLContext] = {}
        self.probes = 0  # requests sent so far (tests, benchmarks)

    def clear(self) -> None:
        with self._refresh:
            self._cache.clear()
            self._targets.clear()

    def _fresh(self, result: ProbeResult | None) -> bool:
        return result is not None and self._clock() - result.at < self.ttl_s

    def targets(self, key: str, engine: Engine) -> tuple[list[Target], int]:
        cached = self._targets.get(key)
        if cached is not None and self._clock() - cached[0] < self.ttl_s:
            return cached[1], cached[2]
        targets, total = load_targets(engine, self.max_accounts)
        self._targets[key] = (self._clock(), targets, total)
        return targets, total

    def results(
        self, settings: Settings, key: str, engine: Engine
    ) -> tuple[list[ProbeResult], int]:
        """The probe of each account (cached or new) and the number of accounts in all;
        ``key`` names the database (accounts of another database are other accounts)."""
        with self._refresh:
            targets, total = self.targets(key, engine)
            due = [t for t in targets if not self._fresh(self._cache.get((key, t.account_id)))]
            timeout = min(self.timeout_s, settings.contacts.timeout_s)
            cfg = settings.contacts
            tls = (cfg.verify_tls, str(cfg.ca_bundle or ""))
            if due and tls not in self._verify:
                self._verify[tls] = tls_verify(cfg)
            verify = self._verify.get(tls)
            if len(due) == 1:
                fresh = [probe(settings, due[0], timeout, verify)]
            elif due:
                with ThreadPoolExecutor(min(MAX_PARALLEL, len(due))) as pool:
                    fresh = list(pool.map(lambda t: probe(settings, t, timeout, verify), due))
            else:
                fresh = []
            self.probes += len(fresh)
            for r in fresh:
                self._cache[(key, r.account_id)] = r
            known = {(key, t.account_id) for t in targets}
            for gone in [k for k in self._cache if k[0] == key and k not in known]:
                del self._cache[gone]  # a disconnected account
            return [self._cache[(key, t.account_id)] for t in targets], total
