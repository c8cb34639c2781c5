"""The FastAPI application factory.

``create_app(settings)`` builds the app around one :class:`FileQueue` (``app.state.queue``)
and, when ``settings.api.embedded_workers`` is true, a :class:`QueueManager`
(``app.state.manager``) started and stopped with the app's lifespan.

Routers are listed in :data:`ROUTERS` (module paths exposing ``router``): adding a resource
is one line there.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import APIRouter, FastAPI

from callannotate import __version__
from callannotate.api.errors import ERROR_RESPONSES, RequestIdMiddleware, install_error_handlers
from callannotate.api.uploads import clean_stale_parts
from callannotate.api.ws import EventService
from callannotate.config import Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.manager import QueueManager

logger = logging.getLogger(__name__)

ROUTERS: tuple[str, ...] = (
    "callannotate.api.routes.health",
    "callannotate.api.routes.jobs",
    "callannotate.api.ws",
    "callannotate.api.routes.stream",
    "callannotate.reports.routes",
    "callannotate.voices.routes",
)

DESCRIPTION = """Self-hosted annotation of call recordings: upload a recording, follow the job,
fetch the annotation (speakers, words, utterances, statistics).

Every error response carries `{"error", "detail", "request_id"}`; the same request id is in
the `X-Request-ID` response header (send your own to correlate with your logs)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the API for ``settings`` (read from the environment when omitted)."""
    settings = settings or Settings()
    queue = FileQueue(settings.queue_dir, settings.queue)
    events = EventService(settings, queue)
    manager = (
        QueueManager(queue, settings, on_event=events.on_job_event)
        if settings.api.embedded_workers
        else None
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(clean_stale_parts, queue.staging_dir())
        await events.start()  # before the manager, which publishes from its start
        if manager is not None:
            await manager.start()
            logger.info("embedded workers started (%d)", settings.workers.concurrency)
        try:
            yield
        finally:
            if manager is not None:
                await manager.stop(graceful=True)
                logger.info("embedded workers stopped")
            await events.stop()

    app = FastAPI(
        title="CallAnnotate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
    )
    app.state.settings = settings
    app.state.queue = queue
    app.state.manager = manager
    app.state.events = events
    install_error_handlers(app)
    app.add_middleware(RequestIdMiddleware)
    for module_name in ROUTERS:
        router = importlib.import_module(module_name).router
        if not isinstance(router, APIRouter):
            raise TypeError(f"{module_name}.router is not an APIRouter")
        app.include_router(router)
    return app
