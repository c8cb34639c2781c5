"""The app factory (callannotate.api.app): what ``create_app`` sets up around the routes."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from callannotate.api.app import create_app
from callannotate.config import Settings


def test_serve_freezes_the_start_up_objects_out_of_the_garbage_collector(
    settings: Settings,
) -> None:
    assert gc.get_freeze_count() == 0
    try:
        with TestClient(create_app(settings, freeze_gc=True)) as client:
            frozen = gc.get_freeze_count()
            assert frozen > 10_000  # the app, its routes and models, the imported modules
            assert client.get("/health").status_code == 200
    finally:
        gc.unfreeze()


def test_apps_built_by_tests_leave_the_collector_alone(settings: Settings) -> None:
    with TestClient(create_app(settings)) as client:
        assert client.get("/health").status_code == 200
        assert gc.get_freeze_count() == 0
