"""Domain errors. Services raise these; the API turns them into one error body:
``{"error": <code>, "detail": <message>, "request_id": <id>}`` with ``status_code``."""

from __future__ import annotations


class CallAnnotateError(Exception):
    status_code: int = 500
    code: str = "internal_error"

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail


class BadRequest(CallAnnotateError):
    status_code = 400
    code = "bad_request"


class NotFound(CallAnnotateError):
    status_code = 404
    code = "not_found"


class Conflict(CallAnnotateError):
    status_code = 409
    code = "conflict"


class PayloadTooLarge(CallAnnotateError):
    status_code = 413
    code = "payload_too_large"


class UnsupportedMediaType(CallAnnotateError):
    status_code = 415
    code = "unsupported_media_type"


class InvalidAudio(CallAnnotateError):
    """The bytes are not decodable audio, or hold no samples."""

    status_code = 422
    code = "invalid_audio"


class Unprocessable(CallAnnotateError):
    status_code = 422
    code = "unprocessable"


class ModelUnavailable(CallAnnotateError):
    """A model file is missing or its checksum differs; ``detail`` names the package."""

    status_code = 503
    code = "model_unavailable"


class ConfigError(CallAnnotateError):
    """The server's configuration is wrong (``config/models.yaml``, a model setting): an
    operator's problem, never the client's, so 503 and not 400."""

    status_code = 503
    code = "configuration_error"


class ServiceUnavailable(CallAnnotateError):
    status_code = 503
    code = "service_unavailable"
