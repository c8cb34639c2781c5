"""Where a job's ``callback_url`` may point: no private, loopback or link-local targets.

A callback is a request the service makes on a client's behalf, so an unchecked URL lets a
client reach what only the server can (``http://169.254.169.254/`` cloud metadata, an admin
port on ``127.0.0.1``, the office LAN). A target is refused unless its address is globally
routable or ``callbacks.allowed_hosts`` lists it (a host name, an address or a CIDR).

The check runs twice:

* at submit time on the URL (:meth:`TargetPolicy.check_url`): a malformed URL or an IP literal
  in a refused range is a 422;
* at delivery time after DNS resolution (:meth:`TargetPolicy.resolve`): every address the
  name resolves to must pass, and the request then goes to the checked address (the URL's
  name is kept for the ``Host`` header and TLS), so a name re-pointed between the check and
  the connection (DNS rebinding) cannot slip through.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

from callannotate.errors import Unprocessable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_URL_LENGTH = 2048


class TargetRefused(Exception):
    """A callback target the policy does not allow (or cannot resolve)."""


@dataclass(frozen=True)
class Target:
    """A checked callback target: connect to one of ``addresses``, speak to ``host``."""

    scheme: str
    host: str  # the URL's host name (Host header, TLS server name)
    port: int
    addresses: tuple[str, ...]  # every resolved address, all checked, in resolver order


_INET_ATON_CHARS = frozenset("0123456789abcdefxABCDEFX.")


def _parse_ip(text: str) -> IPAddress | None:
    """``text`` as an address: the usual forms, and the shorthand IPv4 forms that resolvers
    and HTTP clients also take as one (``127.1``, ``0x7f000001``, ``2130706433``, ``0``)."""
    try:
        return ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
    except ValueError:
        pass
    if not text or not set(text) <= _INET_ATON_CHARS or not any(c.isdigit() for c in text):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(text))
    except OSError:
        return None


def refused_range(ip: IPAddress) -> bool:
    """True for addresses a callback must not reach by default (anything not public)."""
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return not ip.is_global or ip.is_multicast


class TargetPolicy:
    """An allow-list (``callbacks.allowed_hosts`` by default) applied to URLs and resolved
    addresses; ``setting`` names it in refusals."""

    def __init__(self, allowed_hosts: list[str], setting: str = "callbacks.allowed_hosts") -> None:
        self.setting = setting
        self.networks: list[IPNetwork] = []
        self.hostnames: set[str] = set()
        for entry in allowed_hosts:
            entry = entry.strip()
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
            except ValueError:
                self.hostnames.add(entry.lower().rstrip("."))

    def address_allowed(self, ip: IPAddress) -> bool:
        if not refused_range(ip):
            return True
        candidates = [ip]
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            candidates.append(ip.ipv4_mapped)
        return any(
            c in net for c in candidates for net in self.networks if c.version == net.version
        )

    def _split(self, url: str) -> tuple[str, str, int]:
        if len(url) > MAX_URL_LENGTH or any(ch.isspace() for ch in url):
            raise TargetRefused("callback_url must be an http:// or https:// URL")
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as exc:
            raise TargetRefused(f"callback_url is not a valid URL ({exc})") from exc
        scheme = parts.scheme.lower()
        host = (parts.hostname or "").rstrip(".")
        if scheme not in ("http", "https") or not host:
            raise TargetRefused("callback_url must be an http:// or https:// URL with a host")
        return scheme, host, port or (443 if scheme == "https" else 80)

    def check_url(self, url: str) -> None:
        """Submit-time check: ``Unprocessable`` for a malformed URL or a refused IP literal."""
        try:
            _, host, _ = self._split(url)
            ip = _parse_ip(host)
            if ip is not None and host not in self.hostnames and not self.address_allowed(ip):
                raise TargetRefused(
                    f"callback_url points to {ip}, a private, loopback or link-local address "
                    "(allow it with callbacks.allowed_hosts)"
                )
        except TargetRefused as exc:
            raise Unprocessable(str(exc)) from exc

    async def resolve(self, url: str) -> Target:
        """Resolve the URL's host, check every address, return the one to connect to (the
        resolver runs in a thread, as the event loop's own ``getaddrinfo`` does)."""
        return await asyncio.to_thread(self.resolve_blocking, url)

    def resolve_blocking(self, url: str) -> Target:
        """As :meth:`resolve`, for synchronous clients (it blocks on the resolver)."""
        scheme, host, port = self._split(url)
        if _parse_ip(host) is not None:
            return self._checked(scheme, host, port, [])
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError as exc:
            raise ConnectionError(f"cannot resolve {host}: {exc}") from exc
        return self._checked(scheme, host, port, [str(info[4][0]) for info in infos])

    def _checked(self, scheme: str, host: str, port: int, resolved: list[str]) -> Target:
        """The target once every address of ``host`` (its literal, or ``resolved``) passes."""
        literal = _parse_ip(host)
        addresses: list[IPAddress] = []
        for text in [host] if literal is not None else resolved:
            ip = _parse_ip(text)
            if ip is not None and ip not in addresses:
                addresses.append(ip)
        if not addresses:
            raise ConnectionError(f"{host} resolved to no address")
        if host.lower() not in self.hostnames:
            refused = [str(ip) for ip in addresses if not self.address_allowed(ip)]
            if refused:
                where = "is" if literal is not None else f"resolves to {', '.join(refused)}:"
                raise TargetRefused(
                    f"{host} {where} a private, loopback or link-local address "
                    f"(allow it with {self.setting})"
                )
        return Target(
            scheme=scheme, host=host, port=port, addresses=tuple(str(ip) for ip in addresses)
        )


def check_callback_url(url: str, allowed_hosts: list[str]) -> None:
    """Submit-time check of a job's ``callback_url`` (``Unprocessable`` when refused)."""
    TargetPolicy(allowed_hosts).check_url(url)
