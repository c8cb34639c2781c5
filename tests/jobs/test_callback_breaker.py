# ruff: noqa: F811  (the receiver and start_service fixtures are imported from test_callbacks)
"""Callback retries and the per-host circuit breaker against a real local HTTP receiver that
fails N times, then answers 200 (jobs run in real worker processes with a fake runner)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from callback_receiver import Receiver
from prometheus_client import REGISTRY
from test_callbacks import (  # noqa: F401 (fixtures)
    callback_settings,
    receiver,
    run_job,
    start_service,
)

from callannotate.resilience import breakers


def deliveries(result: str) -> float:
    value = REGISTRY.get_sample_value(
        "callannotate_webhook_deliveries_total", {"kind": "callback", "result": result}
    )
    return value or 0.0


async def test_receiver_down_three_times_is_retried_until_delivered(
    tmp_path: Path,
    receiver: Receiver,
    start_service: Any,
) -> None:
    receiver.statuses = [503, 502, 500]
    before = {r: deliveries(r) for r in ("retried", "delivered", "failed")}
    service = await start_service(callback_settings(tmp_path, breaker_failures=5))
    job = await run_job(service, receiver.url())
    assert [a.status_code for a in job.callbacks] == [503, 502, 500, 200]
    assert [a.attempt for a in job.callbacks] == [1, 2, 3, 4]
    assert [a.error for a in job.callbacks] == ["HTTP 503", "HTTP 502", "HTTP 500", None]
    assert job.callbacks[-1].delivered and len(receiver.requests) == 4
    assert deliveries("retried") - before["retried"] == 3
    assert deliveries("delivered") - before["delivered"] == 1
    assert deliveries("failed") == before["failed"]
    assert service.callbacks.breaker.state("127.0.0.1") == "closed"


async def test_open_circuit_stops_calling_the_host_then_a_trial_closes_it(
    tmp_path: Path,
    receiver: Receiver,
    start_service: Any,
) -> None:
    receiver.statuses = [503, 503]
    settings = callback_settings(
        tmp_path, breaker_failures=2, breaker_reset_s=0.6, max_attempts=20, backoff_max_s=0.1
    )
    before = deliveries("circuit_open")
    service = await start_service(settings)
    job = await run_job(service, receiver.url())
    errors = [a.error or "" for a in job.callbacks]
    assert errors[:2] == ["HTTP 503", "HTTP 503"]
    refused = [e for e in errors[2:-1] if "circuit breaker callbacks[127.0.0.1] is open" in e]
    assert refused and len(refused) == len(errors) - 3, errors  # not sent while open
    assert all(a.status_code is None for a in job.callbacks[2:-1])
    assert job.callbacks[-1].delivered  # the trial after breaker_reset_s
    assert len(receiver.requests) == 3  # the host saw two failures and the trial only
    assert deliveries("circuit_open") - before == len(refused)
    assert service.callbacks.breaker.state("127.0.0.1") == "closed"
    status = next(s for s in breakers.statuses() if s.name == "callbacks")
    assert status.state == "closed"


async def test_client_error_is_final_and_does_not_open_the_circuit(
    tmp_path: Path,
    receiver: Receiver,
    start_service: Any,
) -> None:
    receiver.statuses = [404]
    before = deliveries("failed")
    service = await start_service(callback_settings(tmp_path, breaker_failures=1))
    job = await run_job(service, receiver.url())
    assert [(a.status_code, a.error) for a in job.callbacks] == [(404, "HTTP 404")]
    assert deliveries("failed") - before == 1
    assert service.callbacks.breaker.state("127.0.0.1") == "closed"
