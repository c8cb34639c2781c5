"""One settings tree for the whole service.

Every field can be set from the environment with the ``CALLANNOTATE_`` prefix; nested
fields use ``__`` (for example ``CALLANNOTATE_API__MAX_UPLOAD_BYTES=1048576``).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


def _repo_config_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "config"


def _read_secret_file(key: str, value: object) -> str:
    path = Path(str(value))
    try:
        text = path.read_text("utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"{key}: cannot read {path}: {exc}") from None
    if not text:
        raise ValueError(f"{key}: {path} is empty")
    return text


class Section(BaseModel):
    """A group of settings: an unknown key (a typo in YAML or in ``CALLANNOTATE_X__Y``) is an
    error, not silently ignored.

    Every secret setting ``x`` (a ``SecretStr``) may instead be given as ``x_file``: the path of
    a file holding it (a Docker or Kubernetes secret), e.g.
    ``CALLANNOTATE_AUTH__JWT_SECRET_FILE=/run/secrets/jwt_secret``; trailing newlines are
    dropped. A list of secrets (``auth.jwt_previous_secrets``) is one secret per line.
    """

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _secrets_from_files(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        for key in [k for k in data if isinstance(k, str) and k.endswith("_file")]:
            name = key.removesuffix("_file")
            field = cls.model_fields.get(name)
            if key in cls.model_fields or field is None:
                continue
            if field.annotation is not SecretStr and SecretStr not in get_args(field.annotation):
                continue
            text = _read_secret_file(key, data[key])
            secret: str | list[str] = text
            if get_origin(field.annotation) is list:  # one secret per line
                secret = [line.strip() for line in text.splitlines() if line.strip()]
            given = data.get(name)
            if isinstance(given, list):
                given = [g.get_secret_value() if isinstance(g, SecretStr) else g for g in given]
            elif isinstance(given, SecretStr):
                given = given.get_secret_value()
            if given not in (None, "", [], secret):  # the same value twice: a re-validated dump
                raise ValueError(f"set {name} or {key}, not both")
            data = {k: v for k, v in data.items() if k != key}
            data[name] = secret
        return data


class ApiSettings(Section):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, ge=0, le=65535, description="Port the HTTP server listens on.")
    max_upload_bytes: int = Field(GIB, description="Largest accepted upload, in bytes.")
    body_idle_timeout_s: float = Field(
        30.0,
        gt=0,
        description="Seconds a request body may send nothing before it is refused (408).",
    )
    public_url: str = Field("", description="Base URL used in links; empty means relative.")
    embedded_workers: bool = Field(
        True, description="Run the QueueManager and its worker processes inside `serve`."
    )
    processes: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "HTTP server processes of `serve` sharing its port (one event loop uses one core). "
            "More than 1 needs events.backend 'redis'; embedded workers, the metrics port and "
            "the built-in alerts stay in the first process."
        ),
    )
    ws_compression: bool = Field(
        False,
        description=(
            "Offer permessage-deflate on WebSockets. Off: event frames are ~150 bytes, and "
            "compressing each one per client doubled the fan-out CPU (benchmarks/websocket.py)."
        ),
    )
    allowed_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Origins (scheme://host[:port]) whose web pages may open the WebSockets, besides "
            "the server's own origin (its Host header, and public_url's origin); '*' allows "
            "any. A request without an Origin header (not a browser) is always allowed."
        ),
    )
    ws_idle_timeout_s: float = Field(
        60.0,
        gt=0,
        description=(
            "Seconds a /stream WebSocket may send nothing (after its config) before it is "
            "closed with 1008; /ws/{client_id} is closed by its heartbeat instead."
        ),
    )
    ws_max_message_bytes: int = Field(
        64 * 1024, ge=256, description="Longest JSON text message a WebSocket client may send."
    )
    ws_max_json_depth: int = Field(
        32, ge=2, description="Deepest nesting of a WebSocket client's JSON message."
    )
    ssl_certfile: Path | None = Field(
        None,
        description=(
            "PEM certificate (chain) for HTTPS; with ssl_keyfile, `serve` speaks TLS only and "
            "every response carries HSTS (docs/security.md, 'In transit and headers')."
        ),
    )
    ssl_keyfile: Path | None = Field(None, description="PEM private key of ssl_certfile.")
    ssl_keyfile_password: SecretStr | None = Field(
        None, description="Password of an encrypted ssl_keyfile."
    )
    cors_origins: list[str] = Field(
        default_factory=list,
        description=(
            "Origins (scheme://host[:port]) whose web pages may call the API from another "
            "site (CORS); empty (the default) sends no CORS header; '*' allows any."
        ),
    )
    cors_max_age_s: int = Field(
        600, ge=0, description="Seconds a browser may cache a CORS preflight answer."
    )

    @field_validator("cors_origins")
    @classmethod
    def _cors_origins_are_origins(cls, value: list[str]) -> list[str]:
        for origin in value:
            if origin != "*" and not re.fullmatch(r"https?://[^/?#\s]+/?", origin.strip()):
                raise ValueError(f"cors_origins: {origin[:64]!r} is not scheme://host[:port]")
        return value


class QueueSettings(Section):
    max_attempts: int = Field(3, ge=1, description="Attempts before a job is failed for good.")
    retention_hours: float = Field(
        168.0, ge=0, description="Hours completed/failed jobs stay before moving to archived."
    )
    audio_retention_hours: float | None = Field(
        None,
        ge=0,
        description="Hours a finished (completed, failed, cancelled) job keeps its recording; "
        "then the audio file is deleted and the job keeps its annotation (audio_deleted_at). "
        "Unset: recordings are kept until their job is deleted.",
    )
    job_retention_hours: float | None = Field(
        None,
        ge=0,
        description="Hours after which a finished job is deleted with everything it holds "
        "(record, annotation, recording, exports). Unset: jobs are kept (in archived).",
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="A running job's lease; renewed by its runner while alive."
    )
    poll_interval: float = Field(0.5, gt=0, description="Seconds between queue scans.")
    retry_backoff_s: float = Field(
        1.0,
        ge=0,
        description="Wait before a transiently failed job's second attempt; doubles per attempt "
        "(plus up to this much jitter). The job is not claimed before then (job.not_before).",
    )
    retry_backoff_max_s: float = Field(
        60.0, ge=0, description="Longest wait between two attempts of a job."
    )


class WorkerSettings(Section):
    concurrency: int = Field(1, ge=1, description="Worker processes in the embedded pool.")
    job_timeout_s: float = Field(3600.0, gt=0, description="Per-job time limit in seconds.")
    threads: int = Field(2, ge=1, description="CPU threads each worker's models may use.")
    preload_models: bool = Field(
        True, description="Load the models once when a worker process starts."
    )
    timeout_grace_s: float = Field(
        30.0,
        ge=0,
        description=(
            "Seconds a job over job_timeout_s gets to stop by itself (it fails with reason "
            "'timeout', its worker keeps serving) before its worker process is killed."
        ),
    )
    stop_grace_s: float = Field(
        30.0,
        ge=0,
        description=(
            "On SIGTERM (serve, worker with the local executor): seconds running jobs get to "
            "finish before they go back to the queue. Keep it below the orchestrator's stop "
            "timeout (Compose stop_grace_period, Kubernetes terminationGracePeriodSeconds)."
        ),
    )
    max_jobs_per_worker: int = Field(
        0,
        ge=0,
        description="Replace a worker process after this many jobs (memory creep); 0 = never.",
    )


class JobsSettings(Section):
    """Which executor runs queued jobs (docs/scale-out.md)."""

    executor: Literal["local", "celery"] = Field(
        "local",
        description=(
            "'local': worker processes of `serve` / `callannotate worker` poll the queue folder; "
            "'celery': the API sends each job id to Celery workers (`worker --executor celery`)."
        ),
    )
    broker_url: str = Field(
        "redis://127.0.0.1:6379/0", description="Celery broker (Redis) URL of executor 'celery'."
    )
    queue_prefix: str = Field(
        "callannotate",
        description="Prefix of the Celery queues (<prefix>.heavy, <prefix>.light) and broker keys.",
    )
    light_concurrency: int = Field(
        2,
        ge=1,
        description=(
            "Executor 'local': light tasks accepted with 202 (enrollment, export) run at once in "
            "up to this many threads of the API / `callannotate worker` process, never behind "
            "jobs. Callback deliveries run as asyncio tasks on that process's loop, outside it."
        ),
    )
    visibility_margin_s: float = Field(
        600.0,
        gt=0,
        description=(
            "Broker visibility timeout = workers.job_timeout_s + workers.timeout_grace_s + this: "
            "an unacknowledged job is redelivered only after the longest allowed job."
        ),
    )
    ping_interval_s: float = Field(
        5.0, gt=0, description="Seconds between the API's pings of the Celery workers (/ready)."
    )
    worker_lost_after_s: float = Field(
        30.0,
        gt=0,
        description=(
            "A worker whose heartbeat (data_dir/workers/) or ping answer is older than this "
            "counts as lost."
        ),
    )
    heartbeat_interval_s: float = Field(
        5.0,
        gt=0,
        description="Seconds between the heartbeat records every worker process writes.",
    )
    worker_forget_after_s: float = Field(
        3600.0,
        gt=0,
        description="A lost worker's heartbeat record is deleted after this many seconds.",
    )


class EventSettings(Section):
    """Job event bus and the ``/ws/{client_id}`` WebSocket channel."""

    backend: Literal["memory", "redis"] = Field(
        "memory",
        description="'memory': one process; 'redis': pub/sub + replay buffer shared by processes.",
    )
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis URL for backend 'redis'.")
    redis_prefix: str = Field("callannotate", description="Prefix of every Redis key and channel.")
    replay_limit: int = Field(1000, ge=1, description="Events kept per job for resume (newest).")
    replay_ttl_s: float = Field(
        3600.0, gt=0, description="Seconds a job's events stay replayable after its last event."
    )
    ping_interval_s: float = Field(
        20.0, gt=0, description="Seconds between the server's heartbeat pings on each WebSocket."
    )
    pong_timeout_s: float = Field(
        20.0, gt=0, description="Seconds the client has to answer a ping before it is closed."
    )
    send_queue_size: int = Field(
        256, ge=2, description="Events queued per connection before progress is coalesced."
    )
    slow_client_timeout_s: float = Field(
        10.0, gt=0, description="A send queue full for this long closes the socket with 1013."
    )
    publish_attempts: int = Field(
        3, ge=1, description="Attempts to publish one event to Redis before it is dropped."
    )
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failed Redis publishes that open the event bus breaker."
    )
    breaker_reset_s: float = Field(
        5.0, gt=0, description="Seconds the event bus breaker stays open before one trial publish."
    )


class StreamSettings(Section):
    """Limits of one live transcription stream (``WS /stream``)."""

    max_duration_s: float = Field(
        7200.0, gt=0, description="Longest stream, in seconds of audio; then closed with 1009."
    )
    max_bytes: int = Field(
        0,
        ge=0,
        description=(
            "Most bytes of audio one stream may send; 0 derives it from max_duration_s at the "
            "PCM rate (32,000 B/s), which compressed formats never reach first."
        ),
    )

    @property
    def byte_limit(self) -> int:
        """``max_bytes``, or the PCM size of ``max_duration_s`` when it is 0."""
        return self.max_bytes or int(self.max_duration_s * 32000) + 65536


class DatabaseSettings(Section):
    """The relational store (users, keys, tokens; later audit, contacts, call index)."""

    url: str = Field(
        "",
        description=(
            "SQLAlchemy URL, e.g. postgresql+psycopg://user@host/db (also read from "
            "CALLANNOTATE_DATABASE_URL); empty means SQLite at data_dir/callannotate.db."
        ),
    )
    password: SecretStr | None = Field(
        None,
        description=(
            "Password for the database URL, replacing one written in it; keep it out of the URL "
            "with CALLANNOTATE_DATABASE__PASSWORD_FILE (a file holding it, e.g. a Docker secret)."
        ),
    )
    echo: bool = Field(False, description="Log every SQL statement (debugging only).")
    pool_size: int = Field(5, ge=1, description="Connections kept open (PostgreSQL).")
    connect_timeout_s: float = Field(
        10.0, gt=0, description="Seconds to wait for a database connection."
    )


class AuthSettings(Section):
    """Authentication: accounts, JWT access tokens, refresh tokens, API keys."""

    enabled: bool = Field(
        True,
        description=(
            "Require credentials on every API route but /health, /ready, /info and the docs. "
            "Turn off only for a single-user laptop: every request then runs as the local "
            "admin, and `serve` refuses a non-loopback host."
        ),
    )
    jwt_secret: SecretStr | None = Field(
        None,
        description=(
            "HS256 signing secret (at least 32 bytes). Empty: a key ring file "
            "(jwt_key_file) is created and used."
        ),
    )
    jwt_previous_secrets: list[SecretStr] = Field(
        default_factory=list,
        description="Retired HS256 secrets that still verify tokens (JSON list).",
    )
    jwt_key_file: Path | None = Field(
        None, description="Key ring file (default data_dir/secrets/jwt-keys.json, mode 0600)."
    )
    issuer: str = Field("callannotate", description="JWT `iss` claim issued and required.")
    audience: str = Field("callannotate-api", description="JWT `aud` claim issued and required.")
    access_token_ttl_s: int = Field(900, ge=10, description="Lifetime of an access JWT, seconds.")
    refresh_token_ttl_s: int = Field(
        30 * 86400, ge=60, description="Lifetime of a refresh token, seconds."
    )
    leeway_s: int = Field(5, ge=0, description="Clock skew allowed on exp/nbf/iat, seconds.")
    report_link_ttl_s: int = Field(
        900,
        ge=10,
        le=86400,
        description=(
            "Lifetime of a signed report-viewer link (POST /jobs/{id}/report-link), seconds "
            "(at most a day)."
        ),
    )
    login_max_failures_per_account: int = Field(
        5, ge=1, description="Failed logins per user name within the window before 429."
    )
    login_max_failures_per_ip: int = Field(
        50, ge=1, description="Failed logins per client IP within the window before 429."
    )
    login_failure_window_s: float = Field(
        900.0, gt=0, description="Window over which failed logins are counted, seconds."
    )
    argon2_time_cost: int | None = Field(
        None, ge=1, description="Argon2 passes; empty = library default (tests set 1)."
    )
    argon2_memory_cost: int | None = Field(
        None, ge=8, description="Argon2 memory in KiB; empty = library default (64 MiB)."
    )
    principal_cache_s: float = Field(
        5.0, ge=0, description="Seconds a user's role/disabled state is cached per process."
    )
    api_key_touch_interval_s: float = Field(
        60.0, ge=0, description="Least seconds between writes of an API key's last-used time."
    )


class CallbackSettings(Section):
    """Delivery of a job's ``callback_url`` when it completes, fails or is cancelled."""

    secret: SecretStr | None = Field(
        None,
        description=(
            "HMAC-SHA256 key signing each callback (X-CallAnnotate-Signature); unset: callbacks "
            "are sent unsigned and a warning is logged."
        ),
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Host names, IP addresses or CIDRs a callback may reach although they are private, "
            "loopback or link-local (checked on every resolved address), e.g. ['10.0.0.0/8']."
        ),
    )
    timeout_s: float = Field(10.0, gt=0, description="Seconds one delivery attempt may take.")
    max_elapsed_s: float = Field(
        600.0, gt=0, description="Seconds after which a failing callback is given up."
    )
    max_attempts: int = Field(8, ge=1, description="Delivery attempts before giving up.")
    backoff_initial_s: float = Field(
        1.0, gt=0, description="Wait before the first retry; doubles per retry (with jitter)."
    )
    backoff_max_s: float = Field(60.0, gt=0, description="Longest wait between two attempts.")
    breaker_failures: int = Field(
        5, ge=1, description="Consecutive failed deliveries to one host that open its breaker."
    )
    breaker_reset_s: float = Field(
        60.0, gt=0, description="Seconds a host's breaker stays open before one trial delivery."
    )


class EncryptionSettings(Section):
    """Encryption at rest of recordings, captures, results, exports and voiceprints."""

    enabled: bool = Field(
        True,
        description=(
            "Encrypt new files (AES-256-GCM, per-file data key wrapped by a master key). "
            "Files written earlier, encrypted or not, stay readable either way."
        ),
    )
    master_key: SecretStr | None = Field(
        None,
        description=(
            "Master key, base64 of 32 bytes (a secret setting). When unset, master keys come "
            "from the key file."
        ),
    )
    previous_master_keys: list[SecretStr] = Field(
        default_factory=list,
        description="Older master keys (base64) that still unwrap files written under them.",
    )
    key_file: Path | None = Field(
        None,
        description="Master key ring (default data_dir/secrets/master-keys.json, mode 0600).",
    )
    chunk_size: int = Field(
        65536, ge=4096, le=16 * 1024 * 1024, description="Plaintext bytes per encrypted chunk."
    )


class AuditSettings(Section):
    """The audit log: an append-only, hash-chained table plus one ECS log line per record."""

    queue_size: int = Field(
        10_000,
        ge=1,
        description=(
            "Records waiting for the background writer; when full, the request that adds one "
            "waits (in a thread) instead of dropping it."
        ),
    )
    batch_size: int = Field(500, ge=1, description="Most records written in one transaction.")
    log_records: bool = Field(True, description="Also write each record as an ECS log line.")


class MetricsSettings(Section):
    """Prometheus metrics (see docs/observability.md). Never public: a token or a local port."""

    token: SecretStr | None = Field(
        None,
        description=(
            "Bearer token a scraper must send to GET /metrics on the API port; unset: "
            "GET /metrics answers 404 (use the separate port instead)."
        ),
    )
    host: str = Field(
        "127.0.0.1", description="Address of the separate metrics listener (metrics.port)."
    )
    port: int = Field(
        0,
        ge=0,
        le=65535,
        description=(
            "Port of a separate plain-HTTP metrics listener started by `serve` and `worker` "
            "(bound to metrics.host; a Celery worker serves the metrics of all its children "
            "there); 0 = none."
        ),
    )
    queue_wait_sla_s: float = Field(
        300.0, gt=0, description="Queue wait SLA, exported for the alert rules (seconds)."
    )
    job_duration_sla_s: float = Field(
        1800.0, gt=0, description="Job duration SLA, exported for the alert rules (seconds)."
    )


class BucketSettings(Section):
    """One token bucket: ``burst`` requests at once, refilled at ``per_second``."""

    model_config = ConfigDict(extra="forbid")

    burst: int = Field(ge=1, description="Bucket size: requests allowed back to back.")
    per_second: float = Field(
        ge=1 / 3600, description="Refill rate, tokens per second (at least one per hour)."
    )


def _bucket(burst: int, per_second: float) -> BucketSettings:
    return BucketSettings(burst=burst, per_second=per_second)


def _complete_buckets(model: type[BaseModel], data: Any) -> Any:
    """Fill a bucket given in part (``..._UPLOADS__BURST`` alone, or ``{"burst": 10}``) with
    its field's default for the other half, so one variable changes one number."""
    if not isinstance(data, dict):
        return data
    filled = dict(data)
    for name, field in model.model_fields.items():
        given = data.get(name)
        if field.annotation is BucketSettings and isinstance(given, dict):
            default = field.get_default(call_default_factory=True)
            if isinstance(default, BucketSettings):
                filled[name] = {**default.model_dump(), **given}
    return filled


class RoleRateLimits(Section):
    """The budgets of one role (see docs/security.md "Rate limits")."""

    model_config = ConfigDict(extra="forbid")

    uploads: BucketSettings = Field(
        description="POST /jobs, POST /voices, POST /voices/{id}/samples, WS /stream connects."
    )
    reads: BucketSettings = Field(description="Every other HTTP request.")
    ws_connect: BucketSettings = Field(description="WebSocket connections (/ws/*, /stream).")
    ws_messages: BucketSettings = Field(
        description="Messages a client sends on its WebSockets (text and binary audio frames)."
    )

    @model_validator(mode="before")
    @classmethod
    def _fill_partial_buckets(cls, data: Any) -> Any:
        return _complete_buckets(cls, data)


class AdminRateLimits(RoleRateLimits):
    uploads: BucketSettings = Field(default_factory=lambda: _bucket(60, 2.0))
    reads: BucketSettings = Field(default_factory=lambda: _bucket(1200, 100.0))
    ws_connect: BucketSettings = Field(default_factory=lambda: _bucket(60, 2.0))
    ws_messages: BucketSettings = Field(default_factory=lambda: _bucket(2000, 400.0))


class UserRateLimits(RoleRateLimits):
    uploads: BucketSettings = Field(default_factory=lambda: _bucket(20, 0.5))
    reads: BucketSettings = Field(default_factory=lambda: _bucket(300, 30.0))
    ws_connect: BucketSettings = Field(default_factory=lambda: _bucket(20, 1.0))
    ws_messages: BucketSettings = Field(default_factory=lambda: _bucket(1000, 200.0))


class AnonymousRateLimits(RoleRateLimits):
    uploads: BucketSettings = Field(default_factory=lambda: _bucket(5, 0.1))
    reads: BucketSettings = Field(default_factory=lambda: _bucket(120, 10.0))
    ws_connect: BucketSettings = Field(default_factory=lambda: _bucket(10, 0.5))
    ws_messages: BucketSettings = Field(default_factory=lambda: _bucket(100, 20.0))


class RoleRateLimitTable(Section):
    model_config = ConfigDict(extra="forbid")

    admin: AdminRateLimits = Field(default_factory=AdminRateLimits)
    user: UserRateLimits = Field(default_factory=UserRateLimits)
    anonymous: AnonymousRateLimits = Field(
        default_factory=AnonymousRateLimits,
        description="Callers without a valid credential, keyed by client IP (IPv6 by /64).",
    )


class RateLimitSettings(Section):
    """Token-bucket rate limits per principal (per client IP when anonymous)."""

    enabled: bool = Field(True, description="Apply the limits (429 / WebSocket close 1008).")
    backend: Literal["auto", "memory", "redis"] = Field(
        "auto",
        description=(
            "'memory': per process; 'redis': shared by every API process; 'auto': redis when "
            "events.backend is 'redis', memory otherwise."
        ),
    )
    redis_url: str = Field("", description="Redis URL of backend 'redis'; empty: events.redis_url.")
    fail_open: bool = Field(
        True,
        description="When Redis cannot be reached: allow the request (true) or answer 503.",
    )
    memory_max_keys: int = Field(
        100_000, ge=100, description="Buckets kept per process (memory backend, LRU)."
    )
    exempt_paths: list[str] = Field(
        default_factory=lambda: ["/health"],
        description="Route paths never limited (liveness probes).",
    )
    login: BucketSettings = Field(
        default_factory=lambda: _bucket(30, 1.0),
        description="POST /auth/token, /auth/refresh, /auth/logout, per client IP.",
    )
    roles: RoleRateLimitTable = Field(default_factory=RoleRateLimitTable)

    @model_validator(mode="before")
    @classmethod
    def _fill_partial_login_bucket(cls, data: Any) -> Any:
        return _complete_buckets(cls, data)


class ContactsSettings(Section):
    """Address books over CardDAV: cache, sync, circuit breaker, conflicts, phone numbers."""

    default_region: str = Field(
        "RU",
        min_length=2,
        max_length=2,
        description="Region used to read phone numbers without a country code (ISO 3166).",
    )
    conflict_policy: str = Field(
        "server",
        pattern="^(server|client)$",
        description="Field changed here and on the server: which side wins (both are recorded).",
    )
    sync_interval_s: float = Field(
        0.0, ge=0, description="Periodic sync of every account while serving; 0 = on demand."
    )
    timeout_s: float = Field(15.0, gt=0, description="Seconds one CardDAV request may take.")
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description=(
            "Host names, IP addresses or CIDRs a CardDAV server may be at although they are "
            "private, loopback or link-local (checked on every resolved address of every "
            "request, redirects included), e.g. ['carddav.office.lan', '10.0.0.0/8']."
        ),
    )
    verify_tls: bool = Field(True, description="Verify the server's TLS certificate.")
    ca_bundle: Path | None = Field(None, description="Extra CA bundle for self-signed servers.")
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failures that open the circuit breaker."
    )
    breaker_reset_s: float = Field(
        30.0, gt=0, description="Seconds the breaker stays open before one trial request."
    )
    outbox_max_attempts: int = Field(
        5, ge=1, description="Times a write the server rejects is retried before it is dropped."
    )
    use_sync_collection: bool = Field(
        True, description="Use sync-collection when offered; false forces ETag comparison."
    )


class CallSettings(Section):
    """The call's phone numbers on a job (``caller``/``callee``) and how speakers become people
    (see docs/contacts.md, "Speakers become people")."""

    filename_pattern: str | None = Field(
        None,
        description="Regular expression with named groups `caller` and/or `callee`, searched "
        "in the uploaded file name when the form fields are absent, e.g. "
        r"`^\d{8}-\d{6}_(?P<caller>\+?\d+)_(?P<callee>\+?\d+)`.",
    )
    caller_channel: int | None = Field(
        None,
        ge=0,
        description="On per-channel recordings, the channel of the caller (the other one is "
        "the callee); unset: speakers are matched to numbers by voice only.",
    )

    @field_validator("filename_pattern")
    @classmethod
    def _check_pattern(cls, value: str | None) -> str | None:
        if not value:
            return None
        try:
            compiled = re.compile(value)
        except re.error as exc:
            raise ValueError(f"not a regular expression: {exc}") from exc
        if not {"caller", "callee"} & set(compiled.groupindex):
            raise ValueError("needs a named group (?P<caller>...) or (?P<callee>...)")
        return value


class AlertSettings(Section):
    """Built-in alerts for installations without Prometheus (docs/observability.md)."""

    enabled: bool = Field(
        True,
        description=(
            "Watch the service's conditions and notify; runs only where a queue manager runs "
            "(API with embedded workers, `callannotate worker`) and a webhook or e-mail is set."
        ),
    )
    interval_s: float = Field(30.0, gt=0, description="Seconds between two checks.")
    repeat_interval_s: float = Field(
        14400.0, gt=0, description="Seconds before a notice of a still-firing alert is repeated."
    )
    window_s: float = Field(
        900.0, gt=0, description="Window of the failed-jobs and finished-over-SLA counts (s)."
    )
    failed_min_count: int = Field(
        3, ge=1, description="Failed jobs (cancellations excluded) in the window that fire."
    )
    failed_ratio: float = Field(
        0.1, ge=0, le=1, description="Least share of failed among the jobs ended in the window."
    )
    disk_free_ratio: float = Field(
        0.1, ge=0, lt=1, description="Fire when the data folder's free space is below this share."
    )
    webhook_urls: list[str] = Field(
        default_factory=list, description="URLs receiving each notice as signed JSON (POST)."
    )
    webhook_secret: SecretStr | None = Field(
        None,
        description=(
            "HMAC-SHA256 key of X-CallAnnotate-Signature on alert webhooks; unset: "
            "callbacks.secret; both unset: unsigned (a warning is logged)."
        ),
    )
    email_to: list[str] = Field(default_factory=list, description="Recipients of e-mail notices.")
    email_from: str = Field("callannotate@localhost", description="From address of e-mails.")
    smtp_host: str = Field("127.0.0.1", description="SMTP server (submission) host.")
    smtp_port: int = Field(587, ge=1, le=65535, description="SMTP server port.")
    smtp_starttls: bool = Field(
        True, description="Require STARTTLS before AUTH and sending (certificate verified)."
    )
    smtp_ca_file: Path | None = Field(
        None, description="Extra CA (PEM) trusted for the SMTP server's certificate."
    )
    smtp_username: str = Field("", description="SMTP AUTH user; empty: no AUTH.")
    smtp_password: SecretStr | None = Field(None, description="SMTP AUTH password.")
    timeout_s: float = Field(10.0, gt=0, description="Seconds one delivery attempt may take.")
    max_attempts: int = Field(5, ge=1, description="Attempts per notice and receiver.")
    backoff_initial_s: float = Field(
        2.0, gt=0, description="Wait before the first retry; doubles per retry (with jitter)."
    )
    backoff_max_s: float = Field(60.0, gt=0, description="Longest wait between two attempts.")
    max_pending: int = Field(
        100, ge=1, description="Deliveries in flight; beyond, new ones are dropped and counted."
    )
    breaker_failures: int = Field(
        3, ge=1, description="Consecutive failed attempts that open a receiver's breaker."
    )
    breaker_reset_s: float = Field(
        60.0, gt=0, description="Seconds a receiver's breaker stays open before one trial."
    )


class LogSettings(Section):
    level: str = Field("INFO", description="Log level name.")
    json_format: bool = Field(True, description="Structured JSON (ECS) lines when true.")

    @field_validator("level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        """``loud`` stopped `serve` / `worker` with the logging module's traceback."""
        return log_level_name(value)


def log_level_name(value: str) -> str:
    """A logging level name (``debug``, `` INFO ``...) upper-cased; ``ValueError`` naming
    the levels for anything else (the setting and ``annotate --log-level``)."""
    import logging

    name = value.strip().upper()
    if not isinstance(logging.getLevelNamesMapping().get(name), int):
        raise ValueError(f"unknown log level {value!r}; one of DEBUG, INFO, WARNING, ERROR")
    return name


class Settings(BaseSettings):
    """Root of the settings tree."""

    model_config = SettingsConfigDict(
        env_prefix="CALLANNOTATE_",
        env_nested_delimiter="__",
        extra="ignore",
    )

    data_dir: Path = Field(Path("data"), description="Root of all stored state (queue, voices).")
    models_config: Path = Field(
        default_factory=lambda: _repo_config_dir() / "models.yaml",
        description="YAML file naming the model and parameters of each pipeline step.",
    )
    model_cache_dir: Path | None = Field(
        None,
        description=(
            "Where converted/joined model files are cached (default "
            "$XDG_CACHE_HOME/callannotate/models, shared by every data_dir)."
        ),
    )
    api: ApiSettings = Field(default_factory=ApiSettings)
    queue: QueueSettings = Field(default_factory=QueueSettings)
    workers: WorkerSettings = Field(default_factory=WorkerSettings)
    jobs: JobsSettings = Field(default_factory=JobsSettings)
    log: LogSettings = Field(default_factory=LogSettings)
    events: EventSettings = Field(default_factory=EventSettings)
    stream: StreamSettings = Field(default_factory=StreamSettings)
    callbacks: CallbackSettings = Field(default_factory=CallbackSettings)
    database: DatabaseSettings = Field(default_factory=DatabaseSettings)
    database_url: str = Field("", description="Same as database.url (CALLANNOTATE_DATABASE_URL).")
    auth: AuthSettings = Field(default_factory=AuthSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    audit: AuditSettings = Field(default_factory=AuditSettings)
    encryption: EncryptionSettings = Field(default_factory=EncryptionSettings)
    rate_limits: RateLimitSettings = Field(default_factory=RateLimitSettings)
    contacts: ContactsSettings = Field(default_factory=ContactsSettings)
    alerts: AlertSettings = Field(default_factory=AlertSettings)
    call: CallSettings = Field(default_factory=CallSettings)

    @property
    def queue_dir(self) -> Path:
        return self.data_dir / "queue"

    @property
    def model_cache(self) -> Path:
        if self.model_cache_dir is not None:
            return self.model_cache_dir
        base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
        return Path(base) / "callannotate" / "models"

    @property
    def voices_dir(self) -> Path:
        return self.data_dir / "voices"


if __name__ == "__main__":  # python -m callannotate.config --check config/models.yaml
    from callannotate.pipeline.settings_cli import main

    raise SystemExit(main())
