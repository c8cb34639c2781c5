"""One settings tree for the whole service.

Every field can be set from the environment with the ``CALLANNOTATE_`` prefix; nested
fields use ``__`` (for example ``CALLANNOTATE_API__MAX_UPLOAD_BYTES=1048576``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field
from pydantic_settings import BaseSettings, SettingsConfigDict

GIB = 1024**3


def _repo_config_dir() -> Path:
    return Path(__file__).resolve().parents[2] / "config"


class ApiSettings(BaseModel):
    host: str = Field("127.0.0.1", description="Address the HTTP server binds to.")
    port: int = Field(8000, description="Port the HTTP server listens on.")
    max_upload_bytes: int = Field(GIB, description="Largest accepted upload, in bytes.")
    public_url: str = Field("", description="Base URL used in links; empty means relative.")
    embedded_workers: bool = Field(
        True, description="Run the QueueManager and its worker processes inside `serve`."
    )
    ws_compression: bool = Field(
        False,
        description=(
            "Offer permessage-deflate on WebSockets. Off: event frames are ~150 bytes, and "
            "compressing each one per client doubled the fan-out CPU (benchmarks/websocket.py)."
        ),
    )


class QueueSettings(BaseModel):
    max_attempts: int = Field(3, ge=1, description="Attempts before a job is failed for good.")
    retention_hours: float = Field(
        168.0, ge=0, description="Hours completed/failed jobs stay before moving to archived."
    )
    lease_seconds: float = Field(
        60.0, gt=0, description="A running job's lease; renewed by its runner while alive."
    )
    poll_interval: float = Field(0.5, gt=0, description="Seconds between queue scans.")


class WorkerSettings(BaseModel):
    concurrency: int = Field(1, ge=1, description="Worker processes in the embedded pool.")
    job_timeout_s: float = Field(3600.0, gt=0, description="Per-job time limit in seconds.")
    threads: int = Field(2, ge=1, description="CPU threads each worker's models may use.")
    preload_models: bool = Field(
        True, description="Load the models once when a worker process starts."
    )


class EventSettings(BaseModel):
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


class LogSettings(BaseModel):
    level: str = Field("INFO", description="Log level name.")
    json_format: bool = Field(True, description="Structured JSON (ECS) lines when true.")


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
    log: LogSettings = Field(default_factory=LogSettings)
    events: EventSettings = Field(default_factory=EventSettings)

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
