"""OAuth2 scopes. A token or key carries a subset of what its user's role allows.

``read``: see own jobs, results, voices; ``write``: upload, change, delete own resources;
``admin``: manage users, keys, audit and settings (only for the ``admin`` role).
"""

from __future__ import annotations

READ = "read"
WRITE = "write"
ADMIN = "admin"

ALL_SCOPES: frozenset[str] = frozenset({READ, WRITE, ADMIN})
ROLE_SCOPES: dict[str, frozenset[str]] = {
    "admin": ALL_SCOPES,
    "user": frozenset({READ, WRITE}),
}


def parse_scopes(text: str | None) -> frozenset[str]:
    """Space- or comma-separated scope names as a set (unknown names are kept for refusal)."""
    if not text:
        return frozenset()
    return frozenset(s for s in text.replace(",", " ").split() if s)


def format_scopes(scopes: frozenset[str] | set[str]) -> str:
    return " ".join(sorted(scopes))


def unknown_scopes(scopes: frozenset[str]) -> frozenset[str]:
    return scopes - ALL_SCOPES


def grantable(role: str, requested: frozenset[str]) -> frozenset[str]:
    """Scopes of ``requested`` the role allows; all the role allows when none requested."""
    allowed = ROLE_SCOPES.get(role, frozenset())
    return allowed if not requested else requested & allowed
