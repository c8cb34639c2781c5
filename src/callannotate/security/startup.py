"""Checks ``serve`` and ``worker`` make before they start.

* :func:`bind_refusal`: with authentication off every caller is the local admin, so ``serve``
  refuses to listen anywhere but loopback (a laptop's own browser and scripts).
* :func:`prepare_store`: migrate the relational store; tell whether it has any account (a
  server with authentication on and no account can only be used after
  ``callannotate users create NAME --role admin``).
"""

from __future__ import annotations

import ipaddress
import socket

from callannotate.config import Settings

FIRST_ADMIN_HINT = (
    "authentication is on and there are no user accounts yet; create the first admin with:\n"
    "    callannotate users create NAME --role admin\n"
    "then get a token with POST /auth/token (form username, password) or an API key with "
    "`callannotate apikeys create --user NAME --name LABEL`"
)


def _is_loopback_ip(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def is_loopback_host(host: str) -> bool:
    """True when every address ``host`` stands for is a loopback one (127/8, ::1).

    ``0.0.0.0``, ``::`` and an empty host listen everywhere: not loopback. A name is resolved;
    one that does not resolve, or resolves to any other address, is not loopback.
    """
    host = host.strip().strip("[]")
    if not host:
        return False
    if _is_loopback_ip(host):
        return True
    try:
        ipaddress.ip_address(host.split("%", 1)[0])
        return False  # an address, and not a loopback one
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except (OSError, UnicodeError):
        return False
    addresses = {str(info[4][0]) for info in infos}
    return bool(addresses) and all(_is_loopback_ip(a) for a in addresses)


def bind_refusal(settings: Settings) -> str | None:
    """Why ``serve`` must not start on ``settings.api.host``, or ``None`` when it may."""
    if settings.auth.enabled or is_loopback_host(settings.api.host):
        return None
    return (
        f"refusing to listen on {settings.api.host!r} with authentication off "
        "(auth.enabled=false): every caller would be the admin. Listen on 127.0.0.1, or turn "
        "authentication on (unset CALLANNOTATE_AUTH__ENABLED) and create an admin with "
        "`callannotate users create NAME --role admin`"
    )


def prepare_store(settings: Settings) -> bool:
    """Migrate the store to the newest schema; True when it holds at least one account."""
    from callannotate.db import upgrade
    from callannotate.db.engine import Database
    from callannotate.security.store import AuthStore

    upgrade(settings)
    db = Database.from_settings(settings)
    try:
        return AuthStore(db).count_users() > 0
    finally:
        db.dispose()
