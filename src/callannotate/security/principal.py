"""Who is calling: a :class:`Principal` with an id, roles, scopes and how it authenticated.

Routes get the principal from one dependency (:data:`callannotate.api.deps.CurrentPrincipal`),
which calls :func:`callannotate.security.authenticate.authenticate` (``auth.enabled``, the
default). Only when authentication is explicitly switched off does every request run as the
single local user ``local`` with the ``admin`` role.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from callannotate.security.scopes import ALL_SCOPES

ADMIN_ROLE = "admin"
USER_ROLE = "user"
LOCAL_USER_ID = "local"

AuthMethod = Literal["local", "password", "client", "api_key", "link"]


@dataclass(frozen=True)
class Principal:
    """An authenticated caller.

    ``id`` is the owner id stored on resources (a user's id; a client or an API key acts for
    its user). ``scopes`` limits what a token or key may do; ``auth_method`` says how the
    caller proved who it is and ``credential_id`` which credential (key id, client id, jti;
    ``link`` is a signed link of :mod:`callannotate.security.links`, acting read-only for the
    owner of the one resource it was signed for).
    """

    id: str
    roles: frozenset[str] = field(default_factory=frozenset)
    scopes: frozenset[str] = ALL_SCOPES
    auth_method: AuthMethod = "local"
    name: str | None = None
    credential_id: str | None = None
    expires_at: int | None = None
    """Unix time the credential stops being valid (access JWTs); ``None``: until revoked."""

    def has_role(self, role: str) -> bool:
        return role in self.roles

    def has_scope(self, scope: str) -> bool:
        return scope in self.scopes

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def can_access(self, owner: str) -> bool:
        """True when this principal may see or change a resource owned by ``owner``."""
        return self.is_admin or owner == self.id


LOCAL_PRINCIPAL = Principal(id=LOCAL_USER_ID, roles=frozenset({ADMIN_ROLE}), name=LOCAL_USER_ID)


def local_principal() -> Principal:
    """The single local user used while authentication is off (``auth.enabled`` false)."""
    return LOCAL_PRINCIPAL
