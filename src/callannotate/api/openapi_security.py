"""The OpenAPI document says which operations need a credential, and how to send one.

:func:`document_security` wraps ``app.openapi`` so that the document carries two security
schemes (``bearer``: an access JWT or an API key in ``Authorization: Bearer``; ``apiKey``:
``X-API-Key``) and, on every operation whose route depends on
:func:`~callannotate.api.deps.get_current_principal` (directly or through ``ReadPrincipal``,
``WritePrincipal``, ``AdminPrincipal``), ``security`` plus documented ``401``/``403`` error
bodies. The public routes (``/health``, ``/ready``, ``/info``, token endpoints) get none: what
the document says follows from the dependencies, never from a list kept by hand.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute, iter_route_contexts

from callannotate.api.deps import get_current_principal
from callannotate.api.routes.auth import require_principal

#: The dependencies that demand a credential (``/auth``'s own one works with auth off too).
PRINCIPAL_PROVIDERS = (get_current_principal, require_principal)

SCHEMES: dict[str, Any] = {
    "bearer": {
        "type": "http",
        "scheme": "bearer",
        "description": "An access JWT from POST /auth/token, or a personal API key.",
    },
    "apiKey": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "A personal API key (POST /auth/apikeys, `callannotate apikeys create`).",
    },
}
_ERROR_REF = {"$ref": "#/components/schemas/ErrorBody"}


def needs_principal(dependant: Dependant) -> bool:
    """True when a :data:`PRINCIPAL_PROVIDERS` is somewhere in the dependency tree."""
    return any(
        dep.call in PRINCIPAL_PROVIDERS or needs_principal(dep) for dep in dependant.dependencies
    )


def protected_operations(app: FastAPI) -> set[tuple[str, str]]:
    """``(METHOD, path)`` of every HTTP operation that requires a credential."""
    found: set[tuple[str, str]] = set()
    for context in iter_route_contexts(app.routes):  # included routers, with their prefixes
        if not isinstance(context.original_route, APIRoute):
            continue
        dependant: Dependant = context.dependant
        if needs_principal(dependant) and context.path_format:
            found.update((method, context.path_format) for method in context.methods or ())
    return found


def document_security(app: FastAPI) -> None:
    """Make ``app.openapi()`` declare the security schemes and each operation's needs."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schema.setdefault("components", {}).setdefault("securitySchemes", {}).update(SCHEMES)
        for method, path in protected_operations(app):
            operation = schema.get("paths", {}).get(path, {}).get(method.lower())
            if operation is None:
                continue
            operation["security"] = [{"bearer": []}, {"apiKey": []}]
            responses = operation.setdefault("responses", {})
            for code, why in (
                ("401", "No credential, or an invalid, expired or revoked one"),
                ("403", "The credential lacks the scope or role"),
            ):
                responses.setdefault(
                    code,
                    {"description": why, "content": {"application/json": {"schema": _ERROR_REF}}},
                )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
