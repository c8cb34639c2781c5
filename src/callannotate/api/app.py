"""The FastAPI application factory.

``create_app(settings)`` builds the app around one job service
(:func:`callannotate.jobs.service.build_job_service`, ``app.state.jobs``): the file queue
(``app.state.queue``), the event bus and the executor (``app.state.executor``: embedded worker
processes when ``settings.api.embedded_workers`` is true), started and stopped with the app's
lifespan.

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
from callannotate.api.docs import install_docs
from callannotate.api.errors import ERROR_RESPONSES, RequestIdMiddleware, install_error_handlers
from callannotate.api.methods import AllowMiddleware
from callannotate.api.uploads import clean_stale_parts
from callannotate.api.ws import EventService
from callannotate.config import Settings
from callannotate.jobs.runner import JobRunner
from callannotate.jobs.service import build_job_service

logger = logging.getLogger(__name__)

ROUTERS: tuple[str, ...] = (
    "callannotate.api.routes.health",
    "callannotate.api.routes.jobs",
    "callannotate.api.ws",
    "callannotate.api.routes.stream",
    "callannotate.reports.routes",
    "callannotate.voices.routes",
    "callannotate.api.routes.auth",
)

DESCRIPTION = """Self-hosted annotation of call recordings: upload a recording, follow the job,
fetch the annotation (speakers, words, utterances, statistics).

Every error response carries `{"error", "detail", "request_id"}`; the same request id is in
the `X-Request-ID` response header (send your own to correlate with your logs)."""


def create_app(settings: Settings | None = None, *, job_runner: JobRunner | None = None) -> FastAPI:
    """Build the API for ``settings`` (read from the environment when omitted).

    ``job_runner``: what embedded workers run (the pipeline by default; tests pass fakes).
    """
    settings = settings or Settings()
    jobs = build_job_service(settings, embedded=settings.api.embedded_workers, runner=job_runner)
    queue = jobs.queue
    events = EventService(settings, queue)
    events.bus = jobs.bus  # one bus per process: the job service's (as in `callannotate worker`)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(clean_stale_parts, queue.staging_dir())
        await events.start()  # starts the bus before the executor, which publishes from its start
        await jobs.start()
        logger.info("job executor %s started", jobs.executor.name)
        try:
            yield
        finally:
            await jobs.stop(graceful=True)
            logger.info("job executor %s stopped", jobs.executor.name)
            await events.stop()

    app = FastAPI(
        title="CallAnnotate",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        responses=ERROR_RESPONSES,
        docs_url=None,  # offline pages instead, see api/docs.py
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.queue = queue
    app.state.jobs = jobs
    app.state.executor = jobs.executor
    app.state.events = events
    install_error_handlers(app)
    install_docs(app)
    app.add_middleware(AllowMiddleware)
    app.add_middleware(RequestIdMiddleware)  # outermost: ids and 500s for everything inside
    for module_name in ROUTERS:
        router = importlib.import_module(module_name).router
        if not isinstance(router, APIRouter):
            raise TypeError(f"{module_name}.router is not an APIRouter")
        app.include_router(router)
    return app
