"""A small CardDAV client (RFC 6352) on httpx: discovery, address books, multiget, sync.

Synchronous on purpose: it runs in worker threads (``anyio.to_thread``) next to the
synchronous SQLAlchemy store. TLS certificates are verified; Basic or Digest authentication.
``requests`` counts the HTTP requests made (the benchmark reports it).
"""

from __future__ import annotations

import logging
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from urllib.parse import unquote, urljoin, urlsplit

import httpx

from callannotate.contacts.guard import GuardedTransport
from callannotate.jobs.callback_targets import TargetPolicy, TargetRefused

logger = logging.getLogger(__name__)

DAV = "DAV:"
CARDDAV = "urn:ietf:params:xml:ns:carddav"
CS = "http://calendarserver.org/ns/"
NS = {"d": DAV, "c": CARDDAV, "cs": CS}
XML_HEADERS = {"Content-Type": "application/xml; charset=utf-8"}
VCARD_TYPE = "text/vcard; charset=utf-8"
MULTIGET_BATCH = 100


class CardDAVError(Exception):
    """The server answered something we cannot use."""


class Unreachable(CardDAVError):
    """No answer, a timeout or a 5xx: try again later (the circuit breaker counts these)."""


class TargetNotAllowed(CardDAVError):
    """The URL (or a redirect) points to an address ``contacts.allowed_hosts`` does not allow."""


class AuthFailed(CardDAVError):
    """401/403 on a request that needs the account's credentials."""


class PreconditionFailed(CardDAVError):
    """412: the resource changed on the server since our ETag (or already exists)."""


class SyncTokenInvalid(CardDAVError):
    """The server no longer accepts our sync token: a full sync is needed."""


@dataclass(frozen=True)
class AddressBook:
    url: str
    display_name: str
    sync_token: str | None = None
    supports_sync: bool = True


@dataclass(frozen=True)
class Resource:
    href: str
    etag: str | None
    vcard: str | None = None
    status: int = 200


@dataclass
class SyncChanges:
    changed: list[tuple[str, str | None]] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    token: str | None = None


def propfind_body(*props: str) -> str:
    inner = "".join(props)
    return (
        '<?xml version="1.0" encoding="utf-8"?>'
        f'<d:propfind xmlns:d="DAV:" xmlns:c="{CARDDAV}" xmlns:cs="{CS}">'
        f"<d:prop>{inner}</d:prop></d:propfind>"
    )


def _status_code(text: str | None) -> int:
    parts = (text or "").split()
    try:
        return int(parts[1])
    except (IndexError, ValueError):
        return 0


def _responses(body: bytes) -> list[ET.Element]:
    try:
        root = ET.fromstring(body)
    except ET.ParseError as exc:
        raise CardDAVError(f"invalid XML from server: {exc}") from exc
    return root.findall("d:response", NS)


def _ok_props(response: ET.Element) -> ET.Element | None:
    """The ``prop`` element of the 200 propstat of a response, if any."""
    for propstat in response.findall("d:propstat", NS):
        if _status_code(propstat.findtext("d:status", "", NS)) == 200:
            return propstat.find("d:prop", NS)
    return None


class CardDAVClient:
    def __init__(
        self,
        url: str,
        username: str,
        password: str,
        *,
        auth: str = "basic",
        timeout: float = 15.0,
        verify: bool | ssl.SSLContext = True,
        transport: httpx.BaseTransport | None = None,
        policy: TargetPolicy | None = None,
    ) -> None:
        """``policy``: every request (redirects included) goes only where it allows
        (:mod:`callannotate.contacts.guard`); ``None`` (tests, a given ``transport``): anywhere."""
        self.url = url if url.endswith("/") else url + "/"
        if transport is None and policy is not None:
            transport = GuardedTransport(policy, verify)
        credentials: httpx.Auth
        if auth == "digest":
            credentials = httpx.DigestAuth(username, password)
        elif auth == "basic":
            credentials = httpx.BasicAuth(username, password)
        else:
            raise ValueError(f"unknown auth {auth!r} (basic or digest)")
        self.requests = 0
        self._http = httpx.Client(
            auth=credentials,
            timeout=timeout,
            verify=verify,
            follow_redirects=True,
            transport=transport,
            headers={"User-Agent": "CallAnnotate-CardDAV/1"},
            event_hooks={"request": [self._count]},
        )

    def _count(self, _request: httpx.Request) -> None:
        self.requests += 1

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> CardDAVClient:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    # -- plumbing -----------------------------------------------------------------------
    def _abs(self, href: str) -> str:
        return urljoin(self.url, href)

    def _member(self, href: str) -> str:
        """A member's href as a path (some servers send absolute URLs, most send paths)."""
        return urlsplit(self._abs(href)).path

    def request(
        self,
        method: str,
        url: str,
        *,
        content: str | bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> httpx.Response:
        try:
            response = self._http.request(method, url, content=content, headers=headers)
        except httpx.TransportError as exc:  # refused, reset, DNS, TLS, timeout
            raise Unreachable(f"{method} {_path(url)}: {type(exc).__name__}: {exc}") from exc
        except TargetRefused as exc:
            raise TargetNotAllowed(str(exc)) from exc
        if response.status_code == 401:
            raise AuthFailed(f"{method} {_path(url)}: 401 (check user name and password)")
        if response.status_code >= 500:
            raise Unreachable(f"{method} {_path(url)}: HTTP {response.status_code}")
        return response

    def _propfind(self, url: str, body: str, depth: str) -> list[ET.Element]:
        response = self.request(
            "PROPFIND", url, content=body, headers={**XML_HEADERS, "Depth": depth}
        )
        if response.status_code == 404:
            raise CardDAVError(f"PROPFIND {_path(url)}: not found")
        if response.status_code != 207:
            raise CardDAVError(f"PROPFIND {_path(url)}: HTTP {response.status_code}")
        return _responses(response.content)

    # -- discovery ----------------------------------------------------------------------
    def _href_prop(self, url: str, prop: str, path: str) -> str | None:
        for response in self._propfind(url, propfind_body(prop), "0"):
            props = _ok_props(response)
            if props is not None:
                href = props.findtext(path, None, NS)
                if href:
                    return self._abs(href.strip())
        return None

    def _is_addressbook(self, url: str) -> AddressBook | None:
        books = self._books(url, "0")
        return books[0] if books else None

    def discover(self) -> list[AddressBook]:
        """The address books reachable from the account URL (RFC 6764 / RFC 6352 §7)."""
        try:
            book = self._is_addressbook(self.url)
        except CardDAVError as exc:
            if isinstance(exc, Unreachable | AuthFailed):
                raise
            book = None
        if book is not None:
            return [book]
        start = self.url
        parts = urlsplit(self.url)
        if parts.path in ("", "/"):
            well_known = f"{parts.scheme}://{parts.netloc}/.well-known/carddav"
            try:
                response = self.request(
                    "PROPFIND",
                    well_known,
                    content=propfind_body("<d:current-user-principal/>"),
                    headers={**XML_HEADERS, "Depth": "0"},
                )
                start = str(response.url)
            except CardDAVError as exc:
                if isinstance(exc, Unreachable | AuthFailed):
                    raise
        principal = self._href_prop(
            start, "<d:current-user-principal/>", "d:current-user-principal/d:href"
        )
        home = self._href_prop(
            principal or start, "<c:addressbook-home-set/>", "c:addressbook-home-set/d:href"
        )
        if home is None:
            raise CardDAVError("no addressbook-home-set: is this a CardDAV URL?")
        return self.list_addressbooks(home)

    def list_addressbooks(self, home_url: str) -> list[AddressBook]:
        return [b for b in self._books(home_url, "1") if b.url.rstrip("/") != home_url.rstrip("/")]

    def _books(self, url: str, depth: str) -> list[AddressBook]:
        body = propfind_body(
            "<d:resourcetype/>",
            "<d:displayname/>",
            "<d:sync-token/>",
            "<d:supported-report-set/>",
        )
        books: list[AddressBook] = []
        for response in self._propfind(url, body, depth):
            props = _ok_props(response)
            href = response.findtext("d:href", "", NS).strip()
            if props is None or not href:
                continue
            if props.find("d:resourcetype/c:addressbook", NS) is None:
                continue
            token = props.findtext("d:sync-token", None, NS)
            reports = props.find("d:supported-report-set", NS)
            supports_sync = bool(token) or (
                reports is not None and reports.find(".//d:sync-collection", NS) is not None
            )
            books.append(
                AddressBook(
                    url=self._abs(href),
                    display_name=(props.findtext("d:displayname", "", NS) or "").strip(),
                    sync_token=token.strip() if token else None,
                    supports_sync=supports_sync,
                )
            )
        return books

    def create_addressbook(self, url: str, display_name: str) -> AddressBook:
        """Extended MKCOL (RFC 5689) of an address book at ``url``."""
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            f'<d:mkcol xmlns:d="DAV:" xmlns:c="{CARDDAV}"><d:set><d:prop>'
            "<d:resourcetype><d:collection/><c:addressbook/></d:resourcetype>"
            f"<d:displayname>{_xml_text(display_name)}</d:displayname>"
            "</d:prop></d:set></d:mkcol>"
        )
        url = self._abs(url if url.endswith("/") else url + "/")
        response = self.request("MKCOL", url, content=body, headers=XML_HEADERS)
        if response.status_code not in (200, 201):
            raise CardDAVError(f"MKCOL {_path(url)}: HTTP {response.status_code}")
        return AddressBook(url=url, display_name=display_name)

    # -- reading ------------------------------------------------------------------------
    def list_etags(self, book_url: str) -> dict[str, str | None]:
        """``href -> etag`` of every vCard in the book (the fallback when sync is missing)."""
        out: dict[str, str | None] = {}
        body = propfind_body("<d:getetag/>", "<d:resourcetype/>")
        for response in self._propfind(book_url, body, "1"):
            href = response.findtext("d:href", "", NS).strip()
            props = _ok_props(response)
            if not href or props is None or _same(self._abs(href), book_url):
                continue
            if props.find("d:resourcetype/d:collection", NS) is not None:
                continue
            out[self._member(href)] = _etag(props.findtext("d:getetag", None, NS))
        return out

    def multiget(self, book_url: str, hrefs: list[str]) -> list[Resource]:
        """``addressbook-multiget`` of ``hrefs`` in batches; 404s come back with status 404."""
        out: list[Resource] = []
        for start in range(0, len(hrefs), MULTIGET_BATCH):
            batch = hrefs[start : start + MULTIGET_BATCH]
            items = "".join(f"<d:href>{_xml_text(h)}</d:href>" for h in batch)
            body = (
                '<?xml version="1.0" encoding="utf-8"?>'
                f'<c:addressbook-multiget xmlns:d="DAV:" xmlns:c="{CARDDAV}">'
                f"<d:prop><d:getetag/><c:address-data/></d:prop>{items}"
                "</c:addressbook-multiget>"
            )
            response = self.request(
                "REPORT", book_url, content=body, headers={**XML_HEADERS, "Depth": "1"}
            )
            if response.status_code != 207:
                raise CardDAVError(f"multiget {_path(book_url)}: HTTP {response.status_code}")
            for item in _responses(response.content):
                href = self._member(item.findtext("d:href", "", NS).strip())
                props = _ok_props(item)
                if props is None:
                    status = _status_code(item.findtext("d:status", "", NS)) or 404
                    out.append(Resource(href=href, etag=None, status=status))
                    continue
                out.append(
                    Resource(
                        href=href,
                        etag=_etag(props.findtext("d:getetag", None, NS)),
                        vcard=props.findtext("c:address-data", None, NS),
                    )
                )
        return out

    def sync_collection(self, book_url: str, token: str | None) -> SyncChanges:
        """RFC 6578 ``sync-collection`` from ``token`` (None: everything)."""
        body = (
            '<?xml version="1.0" encoding="utf-8"?>'
            '<d:sync-collection xmlns:d="DAV:">'
            f"<d:sync-token>{_xml_text(token or '')}</d:sync-token>"
            "<d:sync-level>1</d:sync-level><d:prop><d:getetag/></d:prop>"
            "</d:sync-collection>"
        )
        response = self.request("REPORT", book_url, content=body, headers=XML_HEADERS)
        if response.status_code in (403, 409) and b"valid-sync-token" in response.content:
            raise SyncTokenInvalid(f"sync token rejected by {_path(book_url)}")
        if response.status_code != 207:
            if token and response.status_code in (400, 403, 409, 412):
                raise SyncTokenInvalid(f"sync token rejected: HTTP {response.status_code}")
            raise CardDAVError(f"sync-collection {_path(book_url)}: HTTP {response.status_code}")
        changes = SyncChanges()
        try:
            root = ET.fromstring(response.content)
        except ET.ParseError as exc:
            raise CardDAVError(f"invalid XML from server: {exc}") from exc
        changes.token = (root.findtext("d:sync-token", "", NS) or "").strip() or None
        for item in root.findall("d:response", NS):
            href = self._member(item.findtext("d:href", "", NS).strip())
            if not href or _same(self._abs(href), book_url):
                continue
            if _status_code(item.findtext("d:status", "", NS)) == 404:
                changes.removed.append(href)
                continue
            props = _ok_props(item)
            if props is None:
                continue
            if props.find("d:resourcetype/d:collection", NS) is not None:
                continue
            changes.changed.append((href, _etag(props.findtext("d:getetag", None, NS))))
        return changes

    def get(self, href: str) -> Resource:
        response = self.request("GET", self._abs(href))
        if response.status_code == 404:
            return Resource(href=href, etag=None, status=404)
        if response.status_code != 200:
            raise CardDAVError(f"GET {_path(href)}: HTTP {response.status_code}")
        return Resource(href=href, etag=_etag(response.headers.get("ETag")), vcard=response.text)

    # -- writing ------------------------------------------------------------------------
    def put(self, href: str, vcard: str, *, etag: str | None = None, create: bool = False) -> str:
        """Store ``vcard``; ``etag``: only if unchanged (If-Match), ``create``: only if new.

        Returns the new ETag (read back when the server does not send one).
        """
        headers = {"Content-Type": VCARD_TYPE}
        if create:
            headers["If-None-Match"] = "*"
        elif etag:
            headers["If-Match"] = f'"{etag}"'
        url = self._abs(href)
        response = self.request("PUT", url, content=vcard.encode("utf-8"), headers=headers)
        if response.status_code == 412:
            raise PreconditionFailed(f"PUT {_path(url)}: changed on the server")
        if response.status_code not in (200, 201, 204):
            detail = response.text[:200].strip()
            raise CardDAVError(f"PUT {_path(url)}: HTTP {response.status_code} {detail}")
        new = _etag(response.headers.get("ETag"))
        if new is None:
            new = self.get(href).etag
        return new or ""

    def delete(self, href: str, *, etag: str | None = None) -> None:
        headers = {"If-Match": f'"{etag}"'} if etag else {}
        url = self._abs(href)
        response = self.request("DELETE", url, headers=headers)
        if response.status_code == 412:
            raise PreconditionFailed(f"DELETE {_path(url)}: changed on the server")
        if response.status_code not in (200, 204, 404):
            raise CardDAVError(f"DELETE {_path(url)}: HTTP {response.status_code}")


def _etag(value: str | None) -> str | None:
    """The ETag without quotes and without a weak prefix (compared as opaque strings)."""
    if not value:
        return None
    value = value.strip()
    if value.startswith("W/"):
        value = value[2:]
    return value.strip('"') or None


def _path(url: str) -> str:
    return urlsplit(url).path or url


def _same(a: str, b: str) -> bool:
    return unquote(urlsplit(a).path).rstrip("/") == unquote(urlsplit(b).path).rstrip("/")


def _xml_text(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def member_href(book_url: str, uid: str) -> str:
    """The path where a new vCard with ``uid`` is created: ``<book path>/<safe uid>.vcf``."""
    safe = "".join(ch if (ch.isascii() and ch.isalnum()) or ch in "-_." else "-" for ch in uid)
    url = urljoin(book_url if book_url.endswith("/") else book_url + "/", f"{safe[:200]}.vcf")
    return urlsplit(url).path  # servers report hrefs as paths: the cache keys on the same form
