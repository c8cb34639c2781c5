"""Built-in alerts against real receivers: an SMTP server (aiosmtpd on 127.0.0.1, STARTTLS
with a trustme certificate, AUTH required) and the HTTP callback receiver of the job tests
(it checks ``X-CallAnnotate-Signature`` the way the docs tell a receiver to).

Conditions come from a real file queue with jobs in states, failures reach the job counters
through the job service's own ``publish`` (event bus -> metrics), and time for the repeat
interval and the window is a manual clock, so nothing sleeps for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import email
import json
import socket
import ssl
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from pydantic import SecretStr
from queue_testing_local import submit, submit_and_claim

from callannotate.config import AlertSettings, MetricsSettings, QueueSettings, Settings
from callannotate.jobs.callbacks import SIGNATURE_HEADER, verify_signature
from callannotate.jobs.events import JobEvent
from callannotate.jobs.filequeue import FileQueue
from callannotate.jobs.models import Job, JobState
from callannotate.jobs.service import JobService, build_job_service
from callannotate.observability.alerts.conditions import Conditions
from callannotate.observability.alerts.watcher import AlertWatcher, build_watcher
from callannotate.observability.metrics import ALERT_NOTIFICATIONS
from callannotate.resilience.breakers import Breaker
from local_servers import free_port

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))
sys.path.append(str(TESTS / "jobs"))  # the callback tests' receiver
from callback_receiver import SECRET, Receiver, serve_receiver  # noqa: E402

from tls_certs import Certs, make_certs  # noqa: E402

SMTP_USER, SMTP_PASSWORD = "alerts", "smtp-pass-for-tests"


# ------------------------------------------------------------------------------ SMTP server


@dataclass
class Mailbox:
    messages: list[email.message.Message] = field(default_factory=list)
    envelopes: list[tuple[str, list[str], bool]] = field(default_factory=list)
    port: int = 0

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.messages.append(email.message_from_bytes(envelope.content))
        self.envelopes.append((envelope.mail_from, list(envelope.rcpt_tos), session.authenticated))
        return "250 OK"


def _authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> Any:
    ok = (
        isinstance(data, LoginPassword)
        and data.login == SMTP_USER.encode()
        and data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)  # not handled: the server answers 535


@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> Certs:
    return make_certs(tmp_path_factory.mktemp("smtp-certs"))


@pytest.fixture
def mailbox(certs: Certs) -> Iterator[Mailbox]:
    """aiosmtpd on 127.0.0.1: STARTTLS required before anything, then AUTH required."""
    box = Mailbox(port=free_port())
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(certs.cert_file), str(certs.key_file))
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=box.port,
        tls_context=context,
        require_starttls=True,
        authenticator=_authenticate,
        auth_required=True,
    )
    controller.start()
    try:
        yield box
    finally:
        controller.stop()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with serve_receiver() as state:
        yield state


# ------------------------------------------------------------------------------ helpers


class Clock:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def alert_settings(tmp_path: Path, **alerts: Any) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        alerts=AlertSettings(**alerts),
        metrics=MetricsSettings(queue_wait_sla_s=60, job_duration_sla_s=600),
        queue=QueueSettings(lease_seconds=30),
    )


def receivers(receiver: Receiver, mailbox: Mailbox, certs: Certs) -> dict[str, Any]:
    return {
        "webhook_urls": [receiver.url()],
        "webhook_secret": SecretStr(SECRET),
        "email_to": ["ops@example.test", "oncall@example.test"],
        "email_from": "callannotate@example.test",
        "smtp_host": "127.0.0.1",
        "smtp_port": mailbox.port,
        "smtp_ca_file": certs.ca_file,
        "smtp_username": SMTP_USER,
        "smtp_password": SecretStr(SMTP_PASSWORD),
        "backoff_initial_s": 0.05,
        "backoff_max_s": 0.2,
    }


def fail_one(jobs: JobService) -> None:
    """Run one job to a final failure on the real queue and announce it like a worker does."""
    job = submit(jobs.queue)
    claimed = jobs.queue.claim("host:1:w0")
    assert claimed is not None and claimed.id == job.id
    jobs.queue.fail(job.id, "invalid_audio: not audio")
    data = {"state": "failed", "error": "invalid_audio: not audio"}
    jobs.publish(JobEvent(type="job.failed", job_id=job.id, owner="u1", data=data))


def complete_one(jobs: JobService) -> Job:
    job = submit(jobs.queue)
    assert jobs.queue.claim("host:1:w0") is not None
    done = jobs.queue.complete(job.id, b"{}")
    jobs.publish(JobEvent(type="job.completed", job_id=job.id, owner="u1", data={"attempts": 1}))
    return done


def count(channel: str, outcome: str) -> float:
    return float(ALERT_NOTIFICATIONS.labels(channel, outcome)._value.get())


@pytest.fixture
async def jobs(tmp_path: Path) -> AsyncIterator[JobService]:
    service = build_job_service(Settings(data_dir=tmp_path / "data"), embedded=False)
    await service.start()
    try:
        yield service
    finally:
        await service.stop()


def webhook_bodies(receiver: Receiver) -> list[dict[str, Any]]:
    return [json.loads(r["body"]) for r in receiver.requests]


# ------------------------------------------------------------------------------ tests


async def test_fire_dedupe_repeat_and_recover_by_webhook_and_email(
    tmp_path: Path, jobs: JobService, receiver: Receiver, mailbox: Mailbox, certs: Certs
) -> None:
    settings = alert_settings(
        tmp_path,
        **receivers(receiver, mailbox, certs),
        failed_min_count=2,
        failed_ratio=0.5,
        window_s=7200,
        repeat_interval_s=3600,
    )
    clock = Clock()
    watcher = AlertWatcher(settings, jobs.queue, jobs.executor, clock=clock)
    delivered = (count("webhook", "delivered"), count("email", "delivered"))
    try:
        assert await watcher.check() == []  # the baseline: nothing fires on an idle queue

        complete_one(jobs)
        fail_one(jobs)
        fail_one(jobs)
        clock.now += 30
        notices = await watcher.check()
        assert [(n.alert, n.status) for n in notices] == [("jobs_failing", "firing")]
        assert notices[0].details == {"failed": 2, "ended": 3, "ratio": 0.667}
        await watcher.drain()

        # de-duplication: still firing, a third failure, no second notice
        fail_one(jobs)
        clock.now += 60
        assert await watcher.check() == []
        assert watcher.firing == ["jobs_failing"]

        # repeat interval
        clock.now += 3600
        repeat = await watcher.check()
        assert [(n.alert, n.status, n.sequence) for n in repeat] == [("jobs_failing", "firing", 2)]
        await watcher.drain()

        # the window moves past the failures: recovered, once
        clock.now += 7201
        resolved = await watcher.check()
        assert [(n.alert, n.status) for n in resolved] == [("jobs_failing", "resolved")]
        clock.now += 30
        assert await watcher.check() == []
        await watcher.drain()
    finally:
        await watcher.stop()

    # the webhook: three signed notices, verified by the receiver with the shared secret
    bodies = webhook_bodies(receiver)
    assert [(b["event"], b["alert"], b["sequence"], b["repeat"]) for b in bodies] == [
        ("alert.firing", "jobs_failing", 1, False),
        ("alert.firing", "jobs_failing", 2, True),
        ("alert.resolved", "jobs_failing", 2, False),
    ]
    assert all(r["valid"] for r in receiver.requests)
    for request in receiver.requests:
        header = request["headers"][SIGNATURE_HEADER]
        assert verify_signature(SECRET.encode(), request["body"], header)
        assert not verify_signature(b"another secret", request["body"], header)
        assert request["headers"]["X-CallAnnotate-Event"] == json.loads(request["body"])["event"]
    assert bodies[2]["ended_at"] is not None and bodies[0]["started_at"] == bodies[2]["started_at"]

    # e-mail: the same three notices, over STARTTLS, authenticated, to both recipients
    subjects = [m["Subject"] for m in mailbox.messages]
    assert len(subjects) == 3
    assert subjects[0].startswith("[CallAnnotate WARNING] jobs_failing: 2 of 3 jobs")
    assert "(repeat 1)" in subjects[1]
    assert subjects[2].startswith("[CallAnnotate RESOLVED] jobs_failing")
    assert all(
        env == ("callannotate@example.test", ["ops@example.test", "oncall@example.test"], True)
        for env in mailbox.envelopes
    )
    assert "Status:   resolved" in mailbox.messages[2].get_payload()
    assert count("webhook", "delivered") - delivered[0] == 3
    assert count("email", "delivered") - delivered[1] == 3


async def test_conditions_read_from_a_real_queue(tmp_path: Path) -> None:
    settings = alert_settings(tmp_path, disk_free_ratio=0.1)
    settings.metrics.job_duration_sla_s = 0.001  # any running job is over it
    queue = FileQueue(settings.queue_dir, settings.queue)
    now = [0.0]
    breaker = Breaker("contacts", failures=2, reset_s=60, clock=lambda: now[0], register=False)
    conditions = Conditions(
        settings, queue, None, breakers=lambda: {"contacts": breaker.open_keys()}
    )

    def firing() -> set[str]:
        return {c.alert for c in conditions.evaluate() if c.firing}

    assert firing() == set()

    running = submit_and_claim(queue)  # a running job whose worker stopped renewing the lease
    lock = running / ".lock"
    lease = json.loads(lock.read_text())
    lease["expires_at"] = "2000-01-01T00:00:00+00:00"
    lock.write_text(json.dumps(lease))
    waiting = submit(queue, created_at=time.time() - 120)  # queued for longer than the 60 s SLA
    for _ in range(2):
        with contextlib.suppress(ConnectionError), breaker.guard("account-1"):
            raise ConnectionError("CardDAV server down")
    by_name = {c.alert: c for c in conditions.evaluate()}
    assert {a for a, c in by_name.items() if c.firing} == {
        "queue_wait_sla",
        "job_duration_sla",
        "workers_lost",
        "circuit_open.contacts",
    }
    assert by_name["queue_wait_sla"].details["queue_depth"] == 1
    assert by_name["queue_wait_sla"].details["oldest_wait_s"] >= 120
    assert "heartbeat" in by_name["workers_lost"].summary
    assert by_name["circuit_open.contacts"].details["open"] == ["account-1"]

    # everything clears: the stale job ends, the waiting one is taken and ends, the CardDAV
    # server answers again
    queue.complete(running.name, b"{}")
    assert queue.claim("host:1:w1") is not None
    queue.complete(waiting.id, b"{}")
    now[0] += 61
    with breaker.guard("account-1"):  # the trial call succeeds
        pass
    assert firing() == set()

    # a nearly full disk: every filesystem is "nearly full" at a 99.9999 % threshold
    full = Conditions(alert_settings(tmp_path, disk_free_ratio=0.999999), queue, None)
    disk = next(c for c in full.evaluate() if c.alert == "disk_low")
    assert disk.firing and disk.severity == "critical" and "free on the data folder" in disk.summary


async def test_dead_receivers_are_retried_and_never_block(
    tmp_path: Path, jobs: JobService, receiver: Receiver
) -> None:
    silent = socket.socket()  # accepts connections (backlog) and never answers
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    refused = free_port()  # nothing listens
    try:
        settings = alert_settings(
            tmp_path,
            webhook_urls=[
                f"http://127.0.0.1:{silent.getsockname()[1]}/hook",
                f"http://127.0.0.1:{refused}/hook",
                receiver.url(),
            ],
            webhook_secret=SecretStr(SECRET),
            email_to=["ops@example.test"],
            smtp_port=free_port(),
            timeout_s=0.5,
            max_attempts=3,
            backoff_initial_s=0.05,
            backoff_max_s=0.1,
            disk_free_ratio=0.999999,  # fires at once
        )
        watcher = AlertWatcher(settings, jobs.queue, jobs.executor)
        before = {
            key: count(*key)
            for key in [("webhook", "retried"), ("webhook", "failed"), ("email", "failed")]
        }
        notices = await watcher.check()
        assert [n.alert for n in notices] == ["disk_low"]
        # the check returned while four deliveries are still trying the dead receivers
        pending = len(watcher._tasks)
        assert pending >= 3
        # meanwhile jobs go through the queue and the next check runs (and de-duplicates)
        done = complete_one(jobs)
        fail_one(jobs)
        assert await watcher.check() == []
        assert jobs.queue.get(done.id).state == JobState.COMPLETED
        await watcher.drain()
        await watcher.stop()
    finally:
        silent.close()
    # the live receiver got its notice; each dead one was tried max_attempts times
    assert [b["alert"] for b in webhook_bodies(receiver)] == ["disk_low"]
    assert count("webhook", "retried") - before[("webhook", "retried")] == 4  # 2 dead x 2
    assert count("webhook", "failed") - before[("webhook", "failed")] == 2
    assert count("email", "failed") - before[("email", "failed")] == 1


async def test_smtp_refuses_plaintext_and_wrong_passwords(
    tmp_path: Path, jobs: JobService, mailbox: Mailbox, certs: Certs
) -> None:
    base = receivers(Receiver(port=free_port()), mailbox, certs)
    base["webhook_urls"] = []
    before = count("email", "failed")
    retried = count("email", "retried")
    for i, change in enumerate(({"smtp_password": SecretStr("wrong")}, {"smtp_starttls": False})):
        # a data folder (state store) each: the second watcher would find disk_low open
        settings = alert_settings(tmp_path / str(i), **{**base, **change}, disk_free_ratio=0.999999)
        watcher = AlertWatcher(settings, jobs.queue, jobs.executor)
        assert [n.alert for n in await watcher.check()] == ["disk_low"]
        await watcher.drain()
        await watcher.stop()
    assert mailbox.messages == []
    assert count("email", "failed") - before == 2
    assert count("email", "retried") == retried  # 535 / 530 are final answers, not retried


async def test_watcher_runs_only_with_a_receiver(tmp_path: Path, jobs: JobService) -> None:
    assert build_watcher(alert_settings(tmp_path), jobs.queue, jobs.executor) is None
    hooked = alert_settings(tmp_path, webhook_urls=["http://127.0.0.1:9/x"], enabled=False)
    assert build_watcher(hooked, jobs.queue, jobs.executor) is None
    on = alert_settings(tmp_path, webhook_urls=["http://127.0.0.1:9/x"], interval_s=0.05)
    watcher = build_watcher(on, jobs.queue, jobs.executor)
    assert watcher is not None
    await watcher.start()  # the background loop checks and is stopped cleanly
    await asyncio.sleep(0.2)
    await watcher.stop()


def test_the_api_watches_while_jobs_fail_and_a_receiver_is_dead(
    tmp_path: Path, receiver: Receiver
) -> None:
    """End to end: ``serve``'s app with an embedded worker whose jobs fail; the lifespan's
    watcher announces ``jobs_failing`` to the live receiver while a dead one (a socket that
    never answers) is retried, and uploads keep being processed meanwhile."""
    import numpy as np
    import soundfile as sf
    from fake_runners import FailingRunner
    from fastapi.testclient import TestClient

    from callannotate.api.app import create_app
    from callannotate.config import ApiSettings, WorkerSettings

    wav = tmp_path / "tone.wav"
    sf.write(wav, 0.3 * np.sin(2 * np.pi * 440.0 * np.arange(8000) / 16000), 16000)
    models = tmp_path / "models.yaml"
    models.write_text("{}\n")
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    settings = Settings(
        data_dir=tmp_path / "data",
        models_config=models,
        api=ApiSettings(embedded_workers=True),
        workers=WorkerSettings(concurrency=1),
        queue=QueueSettings(max_attempts=1, poll_interval=0.05),
        alerts=AlertSettings(
            webhook_urls=[f"http://127.0.0.1:{silent.getsockname()[1]}/", receiver.url()],
            webhook_secret=SecretStr(SECRET),
            interval_s=0.1,
            failed_min_count=2,
            failed_ratio=0.5,
            timeout_s=1.0,
            max_attempts=2,
            backoff_initial_s=0.05,
        ),
    )
    dead_failed = count("webhook", "failed")

    def wait_for(check: Any) -> None:
        deadline = time.monotonic() + 120
        while not check():
            assert time.monotonic() < deadline, "timed out"
            time.sleep(0.05)

    try:
        with TestClient(create_app(settings, job_runner=FailingRunner())) as client:
            ids = []
            for _ in range(3):
                with open(wav, "rb") as fh:
                    response = client.post("/jobs", files={"file": ("tone.wav", fh)})
                assert response.status_code == 202, response.text
                ids.append(response.json()["id"])
            wait_for(
                lambda: any(
                    json.loads(r["body"])["alert"] == "jobs_failing" for r in receiver.requests
                )
            )
            # a job uploaded after the notice is still processed, dead receiver or not
            with open(wav, "rb") as fh:
                ids.append(client.post("/jobs", files={"file": ("tone.wav", fh)}).json()["id"])
            wait_for(lambda: client.get(f"/jobs/{ids[-1]}").json()["state"] == "failed")
            wait_for(lambda: count("webhook", "failed") > dead_failed)  # the dead one gave up
    finally:
        silent.close()
    firing = [json.loads(r["body"]) for r in receiver.requests]
    assert [b["alert"] for b in firing if b["status"] == "firing"] == ["jobs_failing"]
    assert all(r["valid"] for r in receiver.requests)


# ------------------------------------------------------------------------------ restarts


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str | None]:
    """Where the alert state lives: the default SQLite file in data_dir (None), or a
    throw-away database on the local PostgreSQL."""
    if request.param == "sqlite":
        yield None
        return
    from callannotate.db.testing import temporary_postgres_database

    admin: str = request.getfixturevalue("postgres_admin")  # skips, or fails under CI=true
    with temporary_postgres_database(admin) as url:
        yield url


def with_store(settings: Settings, url: str | None) -> Settings:
    if url is not None:
        settings.database.url = url
    return settings


async def test_a_restarted_watcher_neither_repeats_nor_loses_the_recovery(
    tmp_path: Path,
    jobs: JobService,
    receiver: Receiver,
    mailbox: Mailbox,
    certs: Certs,
    store_url: str | None,
) -> None:
    settings = with_store(
        alert_settings(
            tmp_path, **receivers(receiver, mailbox, certs), repeat_interval_s=3600, interval_s=30
        ),
        store_url,
    )
    clock = Clock()
    waiting = submit(jobs.queue, created_at=time.time() - 120)  # over the 60 s queue-wait SLA

    async def run(*advance: float) -> list[tuple[str, str, int]]:
        """A new watcher (a process start): checks after each advance of the clock."""
        watcher = AlertWatcher(settings, jobs.queue, jobs.executor, clock=clock)
        seen = []
        try:
            for seconds in advance:
                clock.now += seconds
                seen += [(n.alert, n.status, n.sequence) for n in await watcher.check()]
            await watcher.drain()
        finally:
            await watcher.stop()
        return seen

    assert await run(0) == [("queue_wait_sla", "firing", 1)]
    # restarted a minute later, still firing: no new notice; the repeat keeps its schedule
    assert await run(60, 600) == []
    assert await run(3000) == [("queue_wait_sla", "firing", 2)]
    # the job is taken while no watcher runs; the next one announces the recovery once the
    # previous watcher's last sighting is older than three check intervals
    assert jobs.queue.claim("host:1:w0") is not None
    jobs.queue.complete(waiting.id, b"{}")
    assert await run(30, 61, 30) == [("queue_wait_sla", "resolved", 2)]
    assert await run(30) == []  # nothing open any more

    bodies = webhook_bodies(receiver)
    assert [(b["event"], b["sequence"], b["repeat"]) for b in bodies] == [
        ("alert.firing", 1, False),
        ("alert.firing", 2, True),
        ("alert.resolved", 2, False),
    ]
    assert len({b["started_at"] for b in bodies}) == 1  # the first sighting, kept over restarts
    assert all(r["valid"] for r in receiver.requests)
    subjects = [m["Subject"] for m in mailbox.messages]
    assert len(subjects) == 3 and "(repeat 1)" in subjects[1] and "RESOLVED" in subjects[2]


async def test_watchers_of_several_processes_share_the_state(
    tmp_path: Path, jobs: JobService, store_url: str | None
) -> None:
    settings = with_store(alert_settings(tmp_path, interval_s=30), store_url)
    clock = Clock()
    one, two = (
        AlertWatcher(settings, jobs.queue, jobs.executor, channels=[], clock=clock)
        for _ in range(2)
    )
    try:
        waiting = submit(jobs.queue, created_at=time.time() - 120)
        assert [n.alert for n in await one.check()] == ["queue_wait_sla"]
        assert await two.check() == []  # open already: announced once for both
        assert two.firing == ["queue_wait_sla"]
        clock.now += 30
        assert await one.check() == []  # `one` is the last to see it firing
        assert jobs.queue.claim("host:1:w0") is not None
        jobs.queue.complete(waiting.id, b"{}")
        clock.now += 5
        assert await two.check() == []  # `one` saw it firing last, 5 s ago: not yet
        resolved = await one.check()  # the last one to see it firing sees it clear
        assert [(n.alert, n.status) for n in resolved] == [("queue_wait_sla", "resolved")]
        assert await two.check() == []
    finally:
        await one.stop()
        await two.stop()


async def test_without_a_database_the_state_is_kept_in_memory(
    tmp_path: Path, jobs: JobService, caplog: pytest.LogCaptureFixture
) -> None:
    dead = f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/test"
    settings = alert_settings(tmp_path, disk_free_ratio=0.999999)
    settings.database.url = dead
    settings.database.connect_timeout_s = 1
    watcher = AlertWatcher(settings, jobs.queue, jobs.executor, channels=[])
    try:
        assert [n.alert for n in await watcher.check()] == ["disk_low"]  # still announced
        assert await watcher.check() == []  # and de-duplicated
        assert watcher.firing == ["disk_low"]
    finally:
        await watcher.stop()
    warnings = [r for r in caplog.records if "alert state cannot be stored" in r.getMessage()]
    assert len(warnings) == 1  # once, not every round


async def test_an_alert_no_process_evaluates_any_more_is_resolved(
    tmp_path: Path, jobs: JobService
) -> None:
    """``circuit_open.events_redis`` opened by a process that used Redis; after a restart
    without Redis nobody evaluates it: resolved once no watcher saw it for three intervals."""
    settings = alert_settings(tmp_path, interval_s=30)
    clock = Clock()
    redis_down = AlertWatcher(
        settings,
        jobs.queue,
        jobs.executor,
        channels=[],
        clock=clock,
        breakers=lambda: {"events_redis": [""]},
    )
    try:
        notices = await redis_down.check()
        assert [(n.alert, n.status) for n in notices] == [("circuit_open.events_redis", "firing")]
    finally:
        await redis_down.stop()
    restarted = AlertWatcher(settings, jobs.queue, jobs.executor, channels=[], clock=clock)
    try:
        clock.now += 30
        assert await restarted.check() == []  # seen firing 30 s ago: maybe by a live process
        assert restarted.firing == ["circuit_open.events_redis"]
        clock.now += 61
        resolved = await restarted.check()
        assert [(n.alert, n.status, n.severity) for n in resolved] == [
            ("circuit_open.events_redis", "resolved", "warning")
        ]
        assert "no watching process reports it" in resolved[0].summary
        assert restarted.firing == []
    finally:
        await restarted.stop()
