"""The WebSocket session protocol against an in-memory socket (unit level).

The same behaviour is exercised over real sockets in tests/api/test_ws.py (ASGI app) and
tests/integration/test_ws_live.py (uvicorn + a real client).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import pytest

from callannotate.config import EventSettings
from callannotate.events.bus import MemoryEventBus
from callannotate.events.hub import Hub
from callannotate.events.models import EventDraft
from callannotate.events.session import CloseCode, Session

OWNERS = {"job-a": "alice", "job-b": "alice", "job-bob": "bob"}


class FakeSocket:
    """Stands in for an accepted WebSocket: a client inbox, the frames sent, the close."""

    def __init__(self) -> None:
        self.inbox: asyncio.Queue[Mapping[str, Any]] = asyncio.Queue()
        self.frames: list[dict[str, Any]] = []
        self.closed: tuple[int, str | None] | None = None
        self.unblocked = asyncio.Event()
        self.unblocked.set()
        self.fail_sends = False  # the next sends raise, as for a client that went away
        self._changed = asyncio.Event()

    # Transport protocol
    async def receive(self) -> Mapping[str, Any]:
        return await self.inbox.get()

    async def send_text(self, data: str) -> None:
        if self.fail_sends:
            raise ConnectionResetError("client went away")
        await self.unblocked.wait()
        self.frames.append(json.loads(data))
        self._changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = (code, reason)
        self.inbox.put_nowait({"type": "websocket.disconnect", "code": code})
        self._changed.set()

    # test side
    def send(self, obj: Any) -> None:
        self.inbox.put_nowait({"type": "websocket.receive", "text": json.dumps(obj)})

    async def wait(self, predicate: Callable[[], bool], timeout: float = 3.0) -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                self._changed.clear()
                await self._changed.wait()

    async def next_of(self, kind: str, start: int = 0) -> dict[str, Any]:
        await self.wait(lambda: any(f["type"] == kind for f in self.frames[start:]))
        return next(f for f in self.frames[start:] if f["type"] == kind)

    def events(self, job: str | None = None) -> list[dict[str, Any]]:
        return [
            f
            for f in self.frames
            if f["type"].startswith("job.") and (job is None or f["job_id"] == job)
        ]


async def lookup(job_id: str) -> str | None:
    return OWNERS.get(job_id)


Opener = Callable[..., Awaitable[tuple[FakeSocket, Session, asyncio.Task[None]]]]


@pytest.fixture
async def env() -> AsyncIterator[tuple[MemoryEventBus, Hub, Opener]]:
    bus = MemoryEventBus(EventSettings(replay_limit=50))
    await bus.start()
    hub = Hub(bus)
    tasks: list[asyncio.Task[None]] = []

    async def open_session(
        principal: str = "alice", *, admin: bool = False, client_id: str = "c1", **settings: Any
    ) -> tuple[FakeSocket, Session, asyncio.Task[None]]:
        sock = FakeSocket()
        session = Session(
            hub=hub,
            transport=sock,
            client_id=client_id,
            principal_id=principal,
            is_admin=admin,
            owner_lookup=lookup,
            settings=EventSettings(**{"replay_limit": 50, **settings}),
        )
        task = asyncio.create_task(session.run())
        tasks.append(task)
        await sock.next_of("welcome")
        return sock, session, task

    yield bus, hub, open_session
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    hub.close()
    await bus.stop()


def publish(bus: MemoryEventBus, job: str, kind: str = "job.progress", **data: Any) -> None:
    bus.publish_sync(EventDraft(type=kind, job_id=job, owner=OWNERS.get(job, "x"), data=data))


async def test_subscribe_replays_history_then_streams_live(env: Any) -> None:
    bus, _, open_session = env
    publish(bus, "job-a", "job.queued")
    publish(bus, "job-a", "job.started")
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a"]})
    ack = await sock.next_of("subscribed")
    assert ack == {"type": "subscribed", "jobs": ["job-a"], "all": False}
    for percent in (10, 50):  # published while the replay may still be pending
        publish(bus, "job-a", percent=percent)
    publish(bus, "job-a", "job.completed")
    await sock.wait(lambda: len(sock.events()) == 5)
    events = sock.events()
    assert [e["seq"] for e in events] == [1, 2, 3, 4, 5]
    assert [e["type"] for e in events] == [
        "job.queued", "job.started", "job.progress", "job.progress", "job.completed"
    ]  # fmt: skip
    assert events[2]["data"] == {"percent": 10}


async def test_resume_with_last_event_id_sends_only_what_was_missed(env: Any) -> None:
    bus, _, open_session = env
    for i in range(6):
        publish(bus, "job-a", percent=i)
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a"], "last_event_id": {"job-a": 4}})
    await sock.wait(lambda: len(sock.events()) == 2)
    publish(bus, "job-a", "job.completed")
    await sock.wait(lambda: len(sock.events()) == 3)
    assert [e["seq"] for e in sock.events()] == [5, 6, 7]


async def test_resume_behind_the_buffer_is_announced(env: Any) -> None:
    bus, _, open_session = env
    for i in range(60):  # replay_limit is 50: seq 1..10 are gone
        publish(bus, "job-a", percent=i)
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a"], "last_event_id": {"job-a": 3}})
    notice = await sock.next_of("replay.truncated")
    assert notice == {
        "type": "replay.truncated",
        "job_id": "job-a",
        "after_seq": 3,
        "first_seq": 11,
        "last_seq": 60,
    }
    await sock.wait(lambda: len(sock.events()) == 50)
    assert sock.events()[0]["seq"] == 11


async def test_resume_from_the_future_restarts_numbering(env: Any) -> None:
    """A last_event_id above the job's counter (buffer expired, server restarted)."""
    bus, _, open_session = env
    publish(bus, "job-a", "job.queued")
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a"], "last_event_id": {"job-a": 40}})
    notice = await sock.next_of("replay.truncated")
    assert notice["after_seq"] == 40 and notice["last_seq"] == 1
    publish(bus, "job-a", "job.started")
    await sock.wait(lambda: len(sock.events()) == 2)
    assert [e["seq"] for e in sock.events()] == [1, 2]


async def test_bad_requests_get_errors_and_the_connection_stays(env: Any) -> None:
    bus, _, open_session = env
    sock, _session, task = await open_session()
    sock.send({"type": "subscribe", "jobs": ["nope", "job-bob", "job-a"]})
    ack = await sock.next_of("subscribed")
    errors = [f for f in sock.frames if f["type"] == "error"]
    assert [(e["code"], e.get("job_id")) for e in errors] == [
        ("unknown_job", "nope"),
        ("unknown_job", "job-bob"),  # another user's job looks like a missing one
    ]
    assert ack["jobs"] == ["job-a"]
    for bad in ({"type": "dance"}, [1, 2], {"type": "subscribe"}, {"type": "ping", "x": 1}):
        start = len(sock.frames)
        sock.send(bad)
        error = await sock.next_of("error", start)
        assert error["code"] in {"unknown_type", "invalid_message"}
    start = len(sock.frames)
    sock.send({"type": "ping", "id": 7})
    assert (await sock.next_of("pong", start))["id"] == 7
    assert not task.done() and sock.closed is None
    publish(bus, "job-bob", "job.queued")  # not ours: never delivered
    publish(bus, "job-a", "job.queued")
    await sock.wait(lambda: len(sock.events()) == 1)
    assert sock.events()[0]["job_id"] == "job-a"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ({"type": "websocket.receive", "bytes": b"\x00\x01"}, CloseCode.UNSUPPORTED_DATA),
        ({"type": "websocket.receive", "text": "{not json"}, CloseCode.INVALID_PAYLOAD),
    ],
)
async def test_malformed_frames_close_the_connection(
    env: Any, frame: dict[str, Any], code: int
) -> None:
    _, _, open_session = env
    sock, _, task = await open_session()
    sock.inbox.put_nowait(frame)
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == code


async def test_all_subscription_sees_own_jobs_only_admin_sees_every_job(env: Any) -> None:
    bus, _, open_session = env
    alice, _, _ = await open_session("alice", client_id="a")
    admin, _, _ = await open_session("root", admin=True, client_id="r")
    for sock in (alice, admin):
        sock.send({"type": "subscribe", "all": True})
        assert (await sock.next_of("subscribed"))["all"] is True
    publish(bus, "job-a", "job.queued")
    publish(bus, "job-bob", "job.queued")
    publish(bus, "job-b", "job.queued")
    await admin.wait(lambda: len(admin.events()) == 3)
    await alice.wait(lambda: len(alice.events()) == 2)
    assert [e["job_id"] for e in alice.events()] == ["job-a", "job-b"]


async def test_subscribing_to_a_job_and_all_delivers_each_event_once(env: Any) -> None:
    bus, _, open_session = env
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a"], "all": True})
    await sock.next_of("subscribed")
    for i in range(3):
        publish(bus, "job-a", percent=i)
    publish(bus, "job-a", "job.completed")
    await sock.wait(lambda: any(e["type"] == "job.completed" for e in sock.events()))
    await asyncio.sleep(0.05)
    assert [e["seq"] for e in sock.events()] == [1, 2, 3, 4]


async def test_unsubscribe_stops_the_stream(env: Any) -> None:
    bus, _, open_session = env
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a", "job-b"]})
    await sock.next_of("subscribed")
    sock.send({"type": "unsubscribe", "jobs": ["job-a"]})
    assert (await sock.next_of("unsubscribed"))["jobs"] == ["job-a"]
    publish(bus, "job-a", "job.queued")
    publish(bus, "job-b", "job.queued")
    await sock.wait(lambda: len(sock.events()) == 1)
    await asyncio.sleep(0.05)
    assert [e["job_id"] for e in sock.events()] == ["job-b"]


async def test_heartbeat_closes_a_client_that_never_answers(env: Any) -> None:
    _, _, open_session = env
    sock, _, task = await open_session(ping_interval_s=0.05, pong_timeout_s=0.15)
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == CloseCode.HEARTBEAT_TIMEOUT
    assert any(f["type"] == "ping" for f in sock.frames)


async def test_heartbeat_keeps_a_client_that_answers(env: Any) -> None:
    _, _, open_session = env
    sock, _, task = await open_session(ping_interval_s=0.05, pong_timeout_s=0.15)
    answered = 0
    while answered < 8:  # ~0.4 s, well past the pong timeout
        start = len(sock.frames)
        await sock.next_of("ping", start)
        sock.send({"type": "pong"})
        answered += 1
    assert not task.done() and sock.closed is None


async def test_a_client_that_stops_reading_is_closed_with_1013_and_memory_is_bounded(
    env: Any,
) -> None:
    bus, _, open_session = env
    sock, session, task = await open_session(send_queue_size=4, slow_client_timeout_s=0.3)
    sock.send({"type": "subscribe", "jobs": ["job-a", "job-b"]})
    await sock.next_of("subscribed")
    sock.unblocked.clear()  # the client stops reading: every send now blocks
    for i in range(500):
        publish(bus, "job-a", percent=i)
        publish(bus, "job-b", "job.partial", words=[f"w{i}"])
        assert len(session.queue) <= 2 * 4 + 2
        if i % 50 == 0:
            await asyncio.sleep(0)
    await asyncio.wait_for(task, 5)
    assert sock.closed is not None and sock.closed[0] == CloseCode.TRY_AGAIN_LATER
    assert "resume" in (sock.closed[1] or "")


async def test_a_slow_but_reading_client_gets_coalesced_progress_and_the_final_event(
    env: Any,
) -> None:
    bus, _, open_session = env
    sock, session, _ = await open_session(send_queue_size=4, slow_client_timeout_s=5)
    sock.send({"type": "subscribe", "jobs": ["job-a"]})
    await sock.next_of("subscribed")
    sock.unblocked.clear()
    for i in range(200):
        publish(bus, "job-a", percent=i)
    publish(bus, "job-a", "job.completed")
    sock.unblocked.set()
    await sock.wait(lambda: any(e["type"] == "job.completed" for e in sock.events()))
    seqs = [e["seq"] for e in sock.events()]
    assert seqs == sorted(set(seqs))  # increasing, no duplicates
    assert seqs[-1] == 201 and len(seqs) < 20  # progress was coalesced
    assert session.queue.coalesced > 0


async def test_a_newer_connection_with_the_same_client_id_replaces_the_old(env: Any) -> None:
    _, hub, open_session = env
    old, _, old_task = await open_session(client_id="tab-1")
    _new, _, new_task = await open_session(client_id="tab-1")
    await asyncio.wait_for(old_task, 3)
    assert old.closed is not None and old.closed[0] == CloseCode.REPLACED
    assert not new_task.done() and hub.session_count == 1


async def test_a_failing_replay_closes_with_1011_so_the_client_resumes(
    env: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    bus, _, open_session = env

    async def unavailable(job_id: str, after_seq: int = 0) -> Any:
        raise ConnectionError("redis is down")

    monkeypatch.setattr(bus, "replay", unavailable)
    sock, _, task = await open_session()
    sock.send({"type": "subscribe", "jobs": ["job-a"]})
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == 1011
    assert "resume" in (sock.closed[1] or "")


async def test_all_with_last_event_id_resumes_the_named_jobs(env: Any) -> None:
    bus, _, open_session = env
    for i in range(4):
        publish(bus, "job-a", percent=i)
    publish(bus, "job-b", "job.queued")  # not named: "all" does not replay history
    sock, _, _ = await open_session()
    sock.send({"type": "subscribe", "all": True, "last_event_id": {"job-a": 2, "job-bob": 1}})
    ack = await sock.next_of("subscribed")
    assert ack == {"type": "subscribed", "jobs": [], "all": True}
    forbidden = await sock.next_of("error")
    assert (forbidden["code"], forbidden["job_id"]) == ("unknown_job", "job-bob")
    await sock.wait(lambda: len(sock.events()) == 2)
    publish(bus, "job-b", "job.started")
    await sock.wait(lambda: len(sock.events()) == 3)
    assert [(e["job_id"], e["seq"]) for e in sock.events()] == [
        ("job-a", 3), ("job-a", 4), ("job-b", 2)
    ]  # fmt: skip


# -- fast path: live events written by the publisher to idle connections ----------------------
async def _subscribed_and_idle(sock: FakeSocket, jobs: list[str]) -> None:
    sock.send({"type": "subscribe", "jobs": jobs})
    await sock.next_of("subscribed")
    await asyncio.sleep(0.05)  # the writer sends the (empty) replays and waits for more


async def test_an_idle_connection_gets_a_live_event_within_the_publish_call(env: Any) -> None:
    bus, _, open_session = env
    sock, _, _ = await open_session()
    await _subscribed_and_idle(sock, ["job-a"])
    publish(bus, "job-a", "job.queued")
    publish(bus, "job-a", percent=5)
    # No await in between: both frames were written by publish itself, in order.
    assert [(e["type"], e["seq"]) for e in sock.events()] == [
        ("job.queued", 1), ("job.progress", 2)
    ]  # fmt: skip


async def test_a_send_that_must_wait_keeps_the_order_with_later_frames(env: Any) -> None:
    bus, _, open_session = env
    sock, session, task = await open_session()
    await _subscribed_and_idle(sock, ["job-a"])
    sock.unblocked.clear()  # the socket cannot take more for now
    publish(bus, "job-a", "job.queued")  # starts sending at once, then has to wait
    await asyncio.sleep(0.01)
    for percent in range(3):  # queued behind it
        publish(bus, "job-a", percent=percent)
    sock.send({"type": "ping", "id": "p"})
    await asyncio.sleep(0.05)
    assert sock.events() == [] and len(session.queue) >= 3
    sock.unblocked.set()
    pong = await sock.next_of("pong")
    await sock.wait(lambda: len(sock.events()) == 4)
    assert [e["seq"] for e in sock.events()] == [1, 2, 3, 4]
    assert sock.frames.index(pong) > max(sock.frames.index(e) for e in sock.events())
    publish(bus, "job-a", "job.completed")  # idle again: straight through
    assert sock.events()[-1]["seq"] == 5
    assert not task.done()


async def test_a_send_blocked_past_the_slow_client_timeout_closes_with_1013(env: Any) -> None:
    bus, _, open_session = env
    sock, _, task = await open_session(slow_client_timeout_s=0.2)
    await _subscribed_and_idle(sock, ["job-a"])
    sock.unblocked.clear()
    publish(bus, "job-a", "job.queued")
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == CloseCode.TRY_AGAIN_LATER
    assert sock.events() == []


async def test_a_failing_send_on_the_fast_path_closes_with_1011(env: Any) -> None:
    bus, _, open_session = env
    sock, _, task = await open_session()
    await _subscribed_and_idle(sock, ["job-a"])
    sock.fail_sends = True
    publish(bus, "job-a", "job.queued")
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == 1011
    assert "resume" in (sock.closed[1] or "")


async def test_a_client_leaving_while_a_send_waits_ends_the_session_cleanly(env: Any) -> None:
    bus, _, open_session = env
    sock, session, task = await open_session()
    await _subscribed_and_idle(sock, ["job-a"])
    sock.unblocked.clear()
    publish(bus, "job-a", "job.queued")
    await asyncio.sleep(0.01)
    sock.inbox.put_nowait({"type": "websocket.disconnect", "code": 1001})
    await asyncio.wait_for(task, 3)
    assert session.close_code == 1001
    assert sock.events() == []
    pending = [t for t in asyncio.all_tasks() if t.get_name().startswith("ws-send-")]
    assert pending == []


@pytest.mark.parametrize(
    ("text", "code", "error"),
    [
        ("[" * 30000 + "]" * 30000, CloseCode.INVALID_PAYLOAD, "invalid_payload"),
        (
            '{"type": "ping", "id": "' + "x" * 70000 + '"}',
            CloseCode.MESSAGE_TOO_BIG,
            "message_too_big",
        ),
        ("{not json", CloseCode.INVALID_PAYLOAD, "invalid_payload"),
    ],
)
async def test_a_too_deep_or_too_big_message_gets_an_error_then_a_close(
    env: Any, text: str, code: int, error: str
) -> None:
    """Issue 15.10: ``[`` x 30000 crashed the handler (RecursionError); now error + close."""
    _, _, open_session = env
    sock, _, task = await open_session()
    start = len(sock.frames)
    sock.inbox.put_nowait({"type": "websocket.receive", "text": text})
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == code and sock.closed[1]
    frames = sock.frames[start:]
    assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == error


async def test_message_limits_are_configurable(env: Any) -> None:
    _, hub, _ = env
    sock = FakeSocket()
    session = Session(
        hub=hub,
        transport=sock,
        client_id="small",
        principal_id="alice",
        is_admin=False,
        owner_lookup=lookup,
        settings=EventSettings(),
        max_message_bytes=40,
        max_json_depth=2,
    )
    task = asyncio.create_task(session.run())
    await sock.next_of("welcome")
    sock.send({"type": "ping", "id": [[1]]})  # depth 3 > 2
    await asyncio.wait_for(task, 3)
    assert sock.closed is not None and sock.closed[0] == CloseCode.INVALID_PAYLOAD


@pytest.mark.parametrize("blocked", [False, True], ids=["idle: sent by publish", "queued"])
async def test_all_forgets_a_job_after_its_final_event_but_not_one_watched_by_id(
    env: Any, blocked: bool
) -> None:
    bus, _, open_session = env
    sock, session, _ = await open_session()
    sock.send({"type": "subscribe", "all": True, "jobs": ["job-b"]})
    await sock.next_of("subscribed")
    await asyncio.sleep(0.05)  # the writer sent job-b's (empty) replay and is idle
    if blocked:  # the frames go through the send queue and the writer
        sock.unblocked.clear()
        publish(bus, "job-b", "job.queued")
        await asyncio.sleep(0.01)
    for job in ("job-a", "job-b"):
        publish(bus, job, percent=50)
        publish(bus, job, "job.completed")
    if blocked:
        assert len(session.queue) == 4
        sock.unblocked.set()
    await sock.wait(lambda: len(sock.events()) == (5 if blocked else 4))
    assert [e["type"] for e in sock.events("job-a")] == ["job.progress", "job.completed"]
    # job-a came through "all" only: its sequence number is forgotten once it ended ...
    assert "job-a" not in session._sent
    # ... job-b is watched by id, so it is kept (a retry continues from there)
    assert session._sent["job-b"] == sock.events("job-b")[-1]["seq"]
