"""Authentication errors. Each carries the response headers RFC 6750 / RFC 6585 ask for."""

from __future__ import annotations

from callannotate.errors import CallAnnotateError


class AuthenticationFailed(CallAnnotateError):
    """Missing, invalid, expired or revoked credentials (the detail never says which part)."""

    status_code = 401
    code = "unauthorized"

    def __init__(
        self,
        detail: str = "invalid credentials",
        *,
        error: str = "invalid_token",
        reason: str = "bad_token",
    ):
        super().__init__(detail)
        self.headers = {"WWW-Authenticate": f'Bearer error="{error}"'}
        #: why, for metrics only (``callannotate_auth_failures_total{reason}``); the client
        #: never sees it
        self.reason = reason


class AuthenticationRequired(AuthenticationFailed):
    """No credential at all: the challenge carries no error code (RFC 6750 §3.1)."""

    def __init__(self, detail: str = "authentication required") -> None:
        super().__init__(detail, reason="missing")
        self.headers = {"WWW-Authenticate": 'Bearer realm="callannotate"'}


class PermissionDenied(CallAnnotateError):
    """Authenticated, but the role or scopes do not allow this."""

    status_code = 403
    code = "forbidden"

    def __init__(self, detail: str = "not allowed") -> None:
        super().__init__(detail)
        self.headers: dict[str, str] = {}


class InsufficientScope(PermissionDenied):
    """The credential is valid but lacks ``scope`` (RFC 6750 §3.1 ``insufficient_scope``)."""

    def __init__(self, scope: str) -> None:
        super().__init__(f"this credential lacks the '{scope}' scope")
        self.scope = scope
        self.headers = {"WWW-Authenticate": f'Bearer error="insufficient_scope", scope="{scope}"'}


class TooManyAttempts(CallAnnotateError):
    """Too many failed logins for this account or address; retry after ``retry_after`` s."""

    status_code = 429
    code = "too_many_requests"

    def __init__(self, retry_after: float) -> None:
        self.retry_after = max(1, int(retry_after + 0.999))
        super().__init__(f"too many failed attempts; retry in {self.retry_after} s")
        self.headers = {"Retry-After": str(self.retry_after)}
