"""Schemathesis over the whole OpenAPI document (issue 15.16): no answer is a server error,
and every answer matches what the document says (status, content type, body schema).

Bounded and repeatable: :data:`MAX_EXAMPLES` generated cases per operation, derandomized.
A completed job is seeded in the queue, and half the cases of a ``{job_id}`` route use its
id, so the job routes are exercised past their 404. The app runs without embedded workers,
so no model is loaded. Authentication is on (the default) and every case carries a valid
admin access token, so the fuzzing reaches past the 401 of every route.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from apiseed import one_word_annotation, tone_wav  # noqa: E402
from authtesting import Accounts, auth_settings  # noqa: E402
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from callannotate.api.app import create_app  # noqa: E402
from callannotate.config import ApiSettings, Settings  # noqa: E402
from callannotate.jobs.filequeue import FileQueue  # noqa: E402
from callannotate.jobs.intake import new_job  # noqa: E402
from callannotate.pipeline.types import (  # noqa: E402
    AnnotateOptions,
)

MAX_EXAMPLES = 25
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


class Seeder:
    """Keeps one completed job in the queue (a fuzzed DELETE may remove it)."""

    def __init__(self, queue: FileQueue, settings: Settings, audio: Path, owner: str) -> None:
        self.queue, self.settings, self.audio, self.owner = queue, settings, audio, owner
        self.job_id = ""
        self.ensure()

    def ensure(self) -> None:
        if self.job_id:
            try:
                if self.queue.get(self.job_id).state.value == "completed":
                    return
                self.queue.delete(self.job_id)
            except Exception:
                pass
        staged = self.queue.staging_dir() / "seed.part"
        staged.write_bytes(self.audio.read_bytes())
        job = new_job(
            self.queue,
            self.settings,
            staged_path=staged,
            filename="call.wav",
            options=AnnotateOptions(),
            owner=self.owner,
        )
        assert self.queue.claim("fuzz") is not None
        self.queue.complete(job.id, one_word_annotation().model_dump_json().encode())
        self.job_id = job.id


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[Any, Seeder, Accounts]]:
    root = tmp_path_factory.mktemp("fuzz")
    app_settings = auth_settings(root / "data", root / "store.db")
    assert app_settings.auth.enabled
    accounts = Accounts.create(app_settings)
    app = accounts.attach(create_app(app_settings))
    audio = tone_wav(root / "call.wav")
    seeder = Seeder(app.state.queue, app_settings, audio, accounts.ids["root"])
    yield schemathesis.openapi.from_asgi("/openapi.json", app), seeder, accounts
    accounts.service.db.dispose()


def _operations() -> list[str]:
    app = create_app(Settings(api=ApiSettings(embedded_workers=False)))
    return [
        f"{method.upper()} {path}"
        for path, item in app.openapi()["paths"].items()
        for method in item
        if method in ("get", "post", "put", "patch", "delete")
    ]


@pytest.mark.parametrize("operation", _operations())
def test_operation_conforms_to_openapi(
    fuzz_target: tuple[Any, Seeder, Accounts], operation: str
) -> None:
    schema, seeder, accounts = fuzz_target
    method, path = operation.split(" ", 1)
    api_operation = schema[path][method]
    strategy = api_operation.as_strategy()
    if "{job_id}" in path:
        strategy = st.one_of(
            strategy, api_operation.as_strategy(path_parameters={"job_id": seeder.job_id})
        )

    @settings(
        max_examples=MAX_EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def run(case: Any) -> None:
        seeder.ensure()
        if case.path_parameters and case.path_parameters.get("job_id") == "":
            case.path_parameters["job_id"] = seeder.job_id
        if path == "/auth/logout-all":  # ends the caller's sessions: a fresh token of bob's
            auth = {"Authorization": f"Bearer {accounts.short_token('bob', 60)}"}
        else:
            auth = accounts.headers("root")
        response = case.call(headers={**(case.headers or {}), **auth})
        assert response.status_code != 401, response.text  # the token is valid throughout
        case.validate_response(response, checks=CHECKS)

    run()


def test_openapi_declares_what_the_server_accepts() -> None:
    """Issue 15.16: enums for `status` and export `format`, the speaker-count rule, and JSON
    error bodies on routes whose success is HTML or audio."""
    doc = create_app(Settings(api=ApiSettings(embedded_workers=False))).openapi()
    paths = doc["paths"]
    status = next(p for p in paths["/jobs"]["get"]["parameters"] if p["name"] == "status")
    assert status["schema"]["items"]["enum"] == [
        "queued",
        "running",
        "completed",
        "failed",
        "cancelled",
        "archived",
    ]
    fmt = next(
        p for p in paths["/jobs/{job_id}/export"]["get"]["parameters"] if p["name"] == "format"
    )
    assert "pdf" in fmt["schema"]["enum"] and "words.csv" in fmt["schema"]["enum"]
    form = paths["/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert (
        "Excludes min_speakers and max_speakers"
        in form["properties"]["num_speakers"]["description"]
    )
    for path, code in [
        ("/jobs/{job_id}/report", "409"),
        ("/jobs/{job_id}/audio", "416"),
        ("/jobs/{job_id}/audio", "400"),
    ]:
        assert list(paths[path]["get"]["responses"][code]["content"]) == ["application/json"]
    for path in ("/voices", "/jobs/{job_id}/speakers/{label}/enroll"):
        assert "400" in paths[path]["post"]["responses"]
