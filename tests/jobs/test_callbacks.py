"""Callbacks (16.1) and their target policy (15.7), against a real HTTP receiver.

The receiver is a ``http.server`` on 127.0.0.1 in a thread: it checks the signature with the
shared secret the way the docs tell a receiver to, records what it got, and answers with the
status codes a test scripts. Jobs run in real worker processes with a fake runner (no models)
through the same job service ``serve`` and ``callannotate worker`` build.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from callback_receiver import SECRET, Receiver, serve_receiver
from fake_runners import SleepRunner
from manager_testing import make_settings
from pydantic import SecretStr
from queue_testing import new_job

from callannotate.config import CallbackSettings, Settings
from callannotate.errors import Unprocessable
from callannotate.jobs.callback_targets import TargetPolicy, TargetRefused, refused_range
from callannotate.jobs.callbacks import sign, verify_signature
from callannotate.jobs.models import Job, JobState
from callannotate.jobs.service import JobService, build_job_service


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


def callback_settings(tmp_path: Path, **overrides: Any) -> Settings:
    settings = make_settings(tmp_path)
    settings.api.public_url = "https://calls.example.com/"
    values: dict[str, Any] = {
        "secret": SecretStr(SECRET),
        "allowed_hosts": ["127.0.0.1"],
        "timeout_s": 5.0,
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
        "max_attempts": 5,
        "max_elapsed_s": 30.0,
    }
    values.update(overrides)
    settings.callbacks = CallbackSettings(**values)
    return settings


async def run_job(service: JobService, callback_url: str, timeout: float = 60.0) -> Job:
    """Queue a job with ``callback_url``, let it finish and its callback end; the final job."""
    job = new_job(service.queue, callback_url=callback_url)
    service.executor.submit(job.id)
    deadline = time.monotonic() + timeout
    while service.queue.get(job.id).state not in (JobState.COMPLETED, JobState.FAILED):
        assert time.monotonic() < deadline, "job did not finish"
        await asyncio.sleep(0.02)
    while not service.queue.get(job.id).callbacks or service.callbacks._tasks:
        assert time.monotonic() < deadline, "callback delivery did not end"
        await asyncio.sleep(0.02)
    return service.queue.get(job.id)


@pytest.fixture
async def start_service() -> Any:
    services: list[JobService] = []

    async def start(settings: Settings) -> JobService:
        service = build_job_service(settings, embedded=True, runner=SleepRunner())
        await service.start()
        services.append(service)
        return service

    yield start
    for service in services:
        await service.stop()


async def test_completed_job_posts_a_signed_summary(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    service = await start_service(callback_settings(tmp_path))
    job = await run_job(service, receiver.url())
    assert job.state == JobState.COMPLETED
    (request,) = receiver.requests
    assert request["valid"], "the receiver could not verify the signature"
    assert request["headers"]["X-CallAnnotate-Event"] == "job.completed"
    assert request["headers"]["Host"] == f"127.0.0.1:{receiver.port}"
    body = json.loads(request["body"])
    base = f"https://calls.example.com/jobs/{job.id}"
    assert body == {
        "event": "job.completed",
        "job_id": job.id,
        "state": "completed",
        "error": None,
        "attempts": 1,
        "finished_at": body["finished_at"],
        "links": {"job": base, "result": f"{base}/result", "report": f"{base}/report"},
    }
    (attempt,) = job.callbacks
    assert attempt.delivered and attempt.status_code == 200 and attempt.error is None
    assert attempt.attempt == 1 and attempt.event == "job.completed"
    assert attempt.duration_ms >= 0


async def test_receiver_failing_twice_gets_three_attempts(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    receiver.statuses = [503, 500]
    service = await start_service(callback_settings(tmp_path))
    job = await run_job(service, receiver.url())
    assert job.state == JobState.COMPLETED
    assert [a.status_code for a in job.callbacks] == [503, 500, 200]
    assert [a.delivered for a in job.callbacks] == [False, False, True]
    assert [a.attempt for a in job.callbacks] == [1, 2, 3]
    assert job.callbacks[0].error == "HTTP 503"
    assert len(receiver.requests) == 3 and all(r["valid"] for r in receiver.requests)
    # Each attempt is signed afresh, for the same announcement.
    deliveries = {r["headers"]["X-CallAnnotate-Delivery"] for r in receiver.requests}
    assert len(deliveries) == 1


async def test_dead_receiver_never_fails_the_job(tmp_path: Path, start_service: Any) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    settings = callback_settings(tmp_path, max_attempts=3)
    service = await start_service(settings)
    job = await run_job(service, f"http://127.0.0.1:{port}/hook")
    assert job.state == JobState.COMPLETED
    assert len(job.callbacks) == 3
    assert all(not a.delivered and a.status_code is None and a.error for a in job.callbacks)


async def test_failing_receiver_is_given_up_after_max_elapsed(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    receiver.statuses = [500] * 1000
    settings = callback_settings(
        tmp_path, max_attempts=1000, max_elapsed_s=1.0, backoff_initial_s=0.1, backoff_max_s=0.4
    )
    service = await start_service(settings)
    job = await run_job(service, receiver.url())
    assert job.state == JobState.COMPLETED
    assert 2 <= len(job.callbacks) < 1000
    span = (job.callbacks[-1].at - job.callbacks[0].at).total_seconds()
    assert span <= settings.callbacks.max_elapsed_s


async def test_a_delivery_cut_by_a_stop_is_taken_over_not_given_up(
    tmp_path: Path, receiver: Receiver, start_service: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A graceful stop while a callback was waiting for its next attempt stored the delivery
    as given up (``delivered: false``); now it stays unfinished and the next start delivers
    it, as after a crash."""
    from callannotate.jobs import callbacks as callbacks_module
    from callannotate.jobs.light import LightKind, LightState

    monkeypatch.setattr(callbacks_module, "STOP_GRACE_S", 0.2)
    receiver.statuses = [503] * 1000
    settings = callback_settings(
        tmp_path, backoff_initial_s=5.0, backoff_max_s=5.0, max_elapsed_s=120.0
    )
    service = await start_service(settings)
    job = new_job(service.queue, callback_url=receiver.url())
    service.executor.submit(job.id)
    deadline = time.monotonic() + 60
    while not service.queue.get(job.id).callbacks:  # the first attempt failed: 5 s to wait
        assert time.monotonic() < deadline, "no delivery attempt"
        await asyncio.sleep(0.02)
    await service.stop()

    (task,) = [t for t, _ in service.callbacks.light.unfinished() if t.kind == LightKind.CALLBACK]
    assert task.state == LightState.RUNNING and task.result is None  # not given up

    receiver.statuses = []  # the receiver is back
    again = await start_service(settings)
    assert await asyncio.to_thread(again.callbacks.recover) == 1
    while not any(a.delivered for a in again.queue.get(job.id).callbacks):
        assert time.monotonic() < deadline, "the delivery was not taken over"
        await asyncio.sleep(0.05)
    await again.callbacks.drain()
    attempts = again.queue.get(job.id).callbacks
    assert [a.delivered for a in attempts] == [False, True]
    assert [a.attempt for a in attempts] == [1, 2]  # numbered on from the stopped run


async def test_client_error_is_final(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    receiver.statuses = [404]
    service = await start_service(callback_settings(tmp_path))
    job = await run_job(service, receiver.url())
    assert [a.status_code for a in job.callbacks] == [404]


async def test_name_resolving_to_loopback_is_refused_at_delivery(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    """15.7: checked after DNS resolution: ``localhost`` is 127.0.0.1, so it is refused."""
    service = await start_service(callback_settings(tmp_path, allowed_hosts=[]))
    job = await run_job(service, receiver.url("localhost"))
    assert job.state == JobState.COMPLETED
    (attempt,) = job.callbacks  # refused: not retried
    assert not attempt.delivered and attempt.status_code is None
    assert attempt.error is not None and attempt.error.startswith("refused: localhost resolves")
    assert receiver.requests == []


async def test_allow_listed_loopback_name_is_delivered(
    tmp_path: Path, receiver: Receiver, start_service: Any
) -> None:
    settings = callback_settings(tmp_path, allowed_hosts=["127.0.0.0/8", "::1"])
    service = await start_service(settings)
    job = await run_job(service, receiver.url("localhost"))
    assert [a.delivered for a in job.callbacks] == [True]
    assert receiver.requests[0]["headers"]["Host"] == f"localhost:{receiver.port}"


async def test_cancelled_job_is_announced(tmp_path: Path, receiver: Receiver) -> None:
    """A job cancelled through the executor (here the API's, without embedded workers)."""
    settings = callback_settings(tmp_path)
    service = build_job_service(settings, embedded=False)
    await service.start()
    try:
        job = new_job(service.queue, callback_url=receiver.url())
        await service.executor.cancel(job.id)
        await service.callbacks.drain()
    finally:
        await service.stop()
    (request,) = receiver.requests
    body = json.loads(request["body"])
    assert body["state"] == "cancelled" and body["links"]["result"] is None
    assert [a.delivered for a in service.queue.get(job.id).callbacks] == [True]


# --------------------------------------------------------------------------- signature


def test_signature_detects_tampering_and_replay() -> None:
    body = b'{"job_id":"x"}'
    now = 1_800_000_000
    header = sign(b"key", body, now)
    assert header.startswith(f"t={now},v1=")
    assert verify_signature(b"key", body, header, now=now + 10)
    assert not verify_signature(b"key", body + b" ", header, now=now)
    assert not verify_signature(b"other", body, header, now=now)
    assert not verify_signature(b"key", body, header, now=now + 301)  # replayed too late
    forged = header.replace(f"t={now}", f"t={now + 200}")  # newer stamp, same MAC
    assert not verify_signature(b"key", body, forged, now=now + 200)
    assert not verify_signature(b"key", body, "garbage", now=now)


# --------------------------------------------------------------------------- target policy


@pytest.mark.parametrize(
    "address",
    [
        "169.254.169.254",
        "10.1.2.3",
        "172.16.0.1",
        "192.168.1.1",
        "127.0.0.1",
        "127.8.9.10",
        "0.0.0.0",
        "100.64.0.1",
        "224.0.0.1",
        "::1",
        "fc00::1",
        "fd12:3456::1",
        "fe80::1",
        "::ffff:127.0.0.1",
        "::ffff:169.254.169.254",
    ],
)
def test_private_loopback_and_link_local_addresses_are_refused(address: str) -> None:
    import ipaddress

    assert refused_range(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    with pytest.raises(Unprocessable):
        TargetPolicy([]).check_url(f"http://{host}/hook")


@pytest.mark.parametrize("address", ["8.8.8.8", "93.184.216.34", "2001:4860:4860::8888"])
def test_public_addresses_pass(address: str) -> None:
    import ipaddress

    assert not refused_range(ipaddress.ip_address(address))
    host = f"[{address}]" if ":" in address else address
    TargetPolicy([]).check_url(f"https://{host}/hook")


def test_allow_list_takes_cidrs_addresses_and_names() -> None:
    policy = TargetPolicy(["10.0.0.0/8", "127.0.0.1", "receiver.internal"])
    policy.check_url("http://10.20.30.40:9000/hook")
    policy.check_url("http://127.0.0.1/hook")
    with pytest.raises(Unprocessable):
        policy.check_url("http://127.0.0.2/hook")
    with pytest.raises(Unprocessable):
        policy.check_url("http://192.168.0.1/hook")
    assert "receiver.internal" in policy.hostnames


@pytest.mark.parametrize(
    "url", ["ftp://example.com/x", "http:///nohost", "http://exa mple.com/", "javascript:x"]
)
def test_malformed_urls_are_refused(url: str) -> None:
    with pytest.raises(Unprocessable):
        TargetPolicy([]).check_url(url)


async def test_resolve_checks_every_address() -> None:
    policy = TargetPolicy([])
    with pytest.raises(TargetRefused):
        await policy.resolve("http://localhost/hook")
    with pytest.raises(TargetRefused):
        await policy.resolve("http://2130706433/hook")  # 127.0.0.1 as one number
    allowed = TargetPolicy(["127.0.0.0/8", "::1"])
    target = await allowed.resolve("http://localhost:8080/hook")
    assert "127.0.0.1" in target.addresses and target.port == 8080
    assert target.host == "localhost"


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("127.1", "127.0.0.1"),
        ("0x7f000001", "127.0.0.1"),
        ("2130706433", "127.0.0.1"),
        ("10.1", "10.0.0.1"),
        ("0", "0.0.0.0"),
        ("0251.0376.0251.0376", "169.254.169.254"),
    ],
)
async def test_shorthand_ipv4_forms_are_addresses_too(host: str, address: str) -> None:
    """Resolvers and HTTP clients take these as IPv4 addresses: they are refused at submit
    like the dotted form, not only at delivery."""
    with pytest.raises(Unprocessable, match=address.replace(".", r"\.")):
        TargetPolicy([]).check_url(f"http://{host}/hook")
    target = await TargetPolicy([address]).resolve(f"http://{host}:8080/hook")
    assert target.addresses == (address,)


@pytest.mark.parametrize("host", ["deadbeef", "cafe.example", "1.2.3.4.5", "0x"])
def test_names_that_only_look_numeric_are_names(host: str) -> None:
    from callannotate.jobs.callback_targets import _parse_ip

    assert _parse_ip(host) is None
