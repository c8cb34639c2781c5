"""High-entropy secrets handed out once and stored only as sha256 digests.

* API key: ``ca_<prefix>_<secret>`` (prefix: 12 hex characters, used to find the row)
* OAuth2 client: id ``cl_<16 hex>``, secret 43 url-safe characters
* refresh token: ``rt_<43 url-safe characters>``

256 random bits make a fast digest safe here (no dictionary to try), unlike passwords.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import uuid

API_KEY_PREFIX = "ca_"
REFRESH_PREFIX = "rt_"
CLIENT_PREFIX = "cl_"


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def same_digest(secret: str, expected: str) -> bool:
    return hmac.compare_digest(digest(secret), expected)


def new_id() -> str:
    return uuid.uuid4().hex


def new_api_key() -> tuple[str, str]:
    """``(prefix, key)``."""
    prefix = secrets.token_hex(6)
    return prefix, f"{API_KEY_PREFIX}{prefix}_{secrets.token_urlsafe(32)}"


def api_key_prefix(key: str) -> str | None:
    """The lookup prefix of something shaped like an API key, else ``None``."""
    if not key.startswith(API_KEY_PREFIX):
        return None
    prefix, sep, rest = key[len(API_KEY_PREFIX) :].partition("_")
    if not sep or len(prefix) != 12 or not rest or len(key) > 200:
        return None
    try:
        int(prefix, 16)
    except ValueError:
        return None
    return prefix


def looks_like_api_key(token: str) -> bool:
    return token.startswith(API_KEY_PREFIX)


def new_refresh_token() -> str:
    return f"{REFRESH_PREFIX}{secrets.token_urlsafe(32)}"


def new_client() -> tuple[str, str]:
    """``(client_id, client_secret)``."""
    return f"{CLIENT_PREFIX}{secrets.token_hex(8)}", secrets.token_urlsafe(32)
