"""Start-up check of the event bus's Redis, before ``serve`` starts its server.

With ``events.backend: redis`` the API cannot start without Redis (it subscribes to the job
events of every process); found down only inside the server's start-up, that was a traceback
in the log and exit 3. Checked first, it is one line naming the setting, as the other
start-up refusals are. Once running, the API rides out Redis outages (docs/scale-out.md).
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

from callannotate.config import Settings

#: Seconds the check waits for Redis to answer.
PING_TIMEOUT_S = 5.0


def _shown(url: str) -> str:
    """``url`` without its password (``redis://:secret@host`` -> ``redis://host``)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        netloc = f"{host}:{parts.port}" if parts.port else host
    except ValueError:
        return "(unparsable URL)"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def redis_refusal(settings: Settings) -> str | None:
    """Why the event bus's Redis cannot be used now (``None``: it answers, or no Redis)."""
    if settings.events.backend != "redis":
        return None
    import redis

    url = settings.events.redis_url
    try:
        client = redis.Redis.from_url(
            url, socket_connect_timeout=PING_TIMEOUT_S, socket_timeout=PING_TIMEOUT_S
        )
        try:
            client.ping()
        finally:
            client.close()
    except (redis.RedisError, ValueError, OSError) as exc:
        return (
            f"cannot reach Redis at {_shown(url)} (events.redis_url, CALLANNOTATE_EVENTS__"
            f"REDIS_URL): {exc}"
        )
    return None
