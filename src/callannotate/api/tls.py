"""HTTPS for ``callannotate serve``: checks the certificate and key before uvicorn starts.

``api.ssl_certfile`` / ``api.ssl_keyfile`` (``serve --ssl-certfile/--ssl-keyfile``) are
loaded once here with :mod:`ssl`, so a missing file, an unreadable one, a key that does not
match the certificate or a wrong key password is one clear line (:class:`TlsConfigError`)
instead of a uvicorn traceback after start-up. :func:`uvicorn_tls_options` returns the
keyword arguments for ``uvicorn.run``.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

from callannotate.config import ApiSettings
from callannotate.errors import ConfigError


class TlsConfigError(ConfigError):
    """The TLS settings cannot be used (message names the setting and the file)."""


def _check_file(setting: str, path: Path) -> None:
    if not path.exists():
        raise TlsConfigError(f"{setting}: {path} does not exist")
    if not path.is_file():
        raise TlsConfigError(f"{setting}: {path} is not a file")
    if not os.access(path, os.R_OK):
        raise TlsConfigError(f"{setting}: {path} is not readable by this user")


def check_tls_files(api: ApiSettings) -> None:
    """Raise :class:`TlsConfigError` unless the certificate and key load together."""
    cert, key = api.ssl_certfile, api.ssl_keyfile
    if cert is None or key is None:
        missing = "ssl_keyfile (--ssl-keyfile)" if key is None else "ssl_certfile (--ssl-certfile)"
        raise TlsConfigError(f"TLS needs both a certificate and a key: {missing} is not set")
    _check_file("ssl_certfile", cert)
    _check_file("ssl_keyfile", key)
    password: str | Callable[[], str]
    if api.ssl_keyfile_password is not None:
        password = api.ssl_keyfile_password.get_secret_value()
    else:

        def password() -> str:  # OpenSSL asks only for an encrypted key; never prompt
            raise TlsConfigError(
                f"ssl_keyfile {key} is encrypted: set ssl_keyfile_password "
                "(CALLANNOTATE_API__SSL_KEYFILE_PASSWORD)"
            )

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(cert, key, password)
    except PermissionError as exc:  # os.access can say yes where open() says no
        raise TlsConfigError(f"cannot read {exc.filename}: permission denied") from exc
    except ssl.SSLError as exc:
        reason = exc.reason or str(exc)
        raise TlsConfigError(
            f"ssl_certfile {cert} and ssl_keyfile {key} do not load together ({reason}): "
            "a PEM certificate and its matching PEM private key are needed (and "
            "ssl_keyfile_password when the key is encrypted)"
        ) from exc
    except OSError as exc:
        raise TlsConfigError(f"cannot load {cert} / {key}: {exc.strerror or exc}") from exc


def tls_enabled(api: ApiSettings) -> bool:
    """Whether TLS was asked for (either file set: a half-set pair is an error)."""
    return api.ssl_certfile is not None or api.ssl_keyfile is not None


def uvicorn_tls_options(api: ApiSettings) -> dict[str, Any]:
    """``uvicorn.run`` keyword arguments for TLS (none when it is off); checks the files."""
    if not tls_enabled(api):
        return {}
    check_tls_files(api)
    password = api.ssl_keyfile_password.get_secret_value() if api.ssl_keyfile_password else None
    return {
        "ssl_certfile": str(api.ssl_certfile),
        "ssl_keyfile": str(api.ssl_keyfile),
        "ssl_keyfile_password": password,
    }
