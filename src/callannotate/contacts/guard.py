"""Where the CardDAV client may connect: no private, loopback or link-local address unless
``contacts.allowed_hosts`` lists it.

Connecting an address book makes the server send requests to a URL a user typed. Unchecked,
any user with the ``write`` scope could make it reach what only the server can
(``http://169.254.169.254/`` cloud metadata, an admin port on ``127.0.0.1``, the office LAN)
and tell open ports from closed ones by the error. :class:`GuardedTransport` checks every
request the client sends, redirects included: it resolves the host, refuses the request when
any address is refused (:class:`~callannotate.jobs.callback_targets.TargetPolicy`, the rule
of job callbacks), and connects to a checked address, keeping the name for ``Host`` and TLS,
so a name re-pointed after the check (DNS rebinding) cannot slip through.

A CardDAV server on the LAN or on the same host is common: list it in
``contacts.allowed_hosts`` (host names, addresses or CIDRs).
"""

from __future__ import annotations

import ssl

import httpx

from callannotate.jobs.callback_targets import TargetPolicy

SETTING = "contacts.allowed_hosts"


def contacts_policy(allowed_hosts: list[str]) -> TargetPolicy:
    """The target policy of CardDAV requests."""
    return TargetPolicy(allowed_hosts, setting=SETTING)


class GuardedTransport(httpx.BaseTransport):
    """An HTTP transport that sends a request only to addresses ``policy`` allows.

    Raises :class:`~callannotate.jobs.callback_targets.TargetRefused` for a refused target
    and ``httpx.ConnectError`` when the name does not resolve or no address accepts.
    """

    def __init__(self, policy: TargetPolicy, verify: bool | ssl.SSLContext = True) -> None:
        self.policy = policy
        self._inner = httpx.HTTPTransport(verify=verify)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        try:
            target = self.policy.resolve_blocking(str(request.url))
        except ConnectionError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc
        if target.scheme == "https":
            request.extensions = {**request.extensions, "sni_hostname": target.host}
        original = request.url
        for index, address in enumerate(target.addresses):
            request.url = original.copy_with(host=address)  # Host header keeps the name
            try:
                return self._inner.handle_request(request)
            except httpx.ConnectError:
                if index == len(target.addresses) - 1:
                    raise
            finally:
                request.url = original
        raise httpx.ConnectError(f"{target.host} has no address", request=request)

    def close(self) -> None:
        self._inner.close()
