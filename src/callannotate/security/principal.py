"""Who is calling: a :class:`Principal` with an id and roles.

Until authentication lands (security issue) every request runs as the single local user
``local`` with the ``admin`` role. Routes get the principal from one dependency
(:data:`callannotate.api.deps.CurrentPrincipal`), so swapping in real authentication is a
change in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field

ADMIN_ROLE = "admin"
LOCAL_USER_ID = "local"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller."""

    id: str
    roles: frozenset[str] = field(default_factory=frozenset)

    def has_role(self, role: str) -> bool:
        return role in self.roles

    @property
    def is_admin(self) -> bool:
        return ADMIN_ROLE in self.roles

    def can_access(self, owner: str) -> bool:
        """True when this principal may see or change a resource owned by ``owner``."""
        return self.is_admin or owner == self.id


LOCAL_PRINCIPAL = Principal(id=LOCAL_USER_ID, roles=frozenset({ADMIN_ROLE}))


def local_principal() -> Principal:
    """The single local user used while the service has no authentication."""
    return LOCAL_PRINCIPAL
