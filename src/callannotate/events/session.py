"""One WebSocket client: the subscription protocol, replay/resume, heartbeat, backpressure.

The connection's own coroutine reads client messages; one writer task sends everything (the
send queue, replays, heartbeat pings) so frames never interleave. See
``docs/api-specification.md`` for the protocol as a client sees it.

Authentication happens before the session starts (``api/deps.py``); the session keeps the
principal's id (only jobs it may see are delivered: by id after an owner check, by ``all``
through the hub's per-owner index) and the token's expiry: ``auth.expiring`` is sent once
:data:`EXPIRY_WARNING_S` before it, the connection closes with ``4401`` at it, and an
``{"type": "auth", "token"}`` message checked by ``renew`` moves it.

Fast path: a live event that reaches an idle connection (nothing queued, nothing being sent)
is written by the publisher right away instead of waking the connection's writer task. With a
thousand connections watching one job, waking a thousand tasks per event was about a quarter
of the fan-out cost. The send is started inline and, when the socket can take it (the usual
case), completes without suspending; a send that has to wait for the socket (a slow reader) is
finished by a task of its own and the writer waits for it before sending anything else, so the
order of frames and the backpressure rules are the same as on the queued path.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import types
from collections.abc import Awaitable, Callable, Coroutine, Generator, Mapping
from datetime import UTC, datetime
from enum import IntEnum
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from callannotate.config import EventSettings
from callannotate.events.hub import Hub
from callannotate.events.limits import InvalidPayload, MessageTooBig, parse_message
from callannotate.events.models import BusEvent, Replay, iso_ts
from callannotate.events.sendqueue import Outgoing, SendQueue

log = logging.getLogger(__name__)

#: Most jobs one connection may subscribe to by id.
MAX_SUBSCRIPTIONS = 1000
#: Longest client message (UTF-8 bytes) the session parses, unless configured.
MAX_MESSAGE_BYTES = 64 * 1024
#: Deepest JSON nesting of a client message, unless configured.
MAX_JSON_DEPTH = 32


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    UNSUPPORTED_DATA = 1003  # binary frame
    INVALID_PAYLOAD = 1007  # text that is not JSON, or JSON nested too deep
    POLICY_VIOLATION = 1008  # bad client id, origin not allowed (before accept: HTTP 403)
    MESSAGE_TOO_BIG = 1009  # a text message over the size limit
    TRY_AGAIN_LATER = 1013  # too slow: send queue stayed full; reconnect and resume
    HEARTBEAT_TIMEOUT = 4000  # no pong within pong_timeout_s
    REPLACED = 4001  # a newer connection with the same client id took over
    TOKEN_EXPIRED = 4401  # the access token expired and no {"type": "auth"} renewed it


#: Seconds before the token's expiry at which the session sends ``auth.expiring`` (once).
EXPIRY_WARNING_S = 60.0


class Transport(Protocol):
    """What the session needs from a WebSocket (Starlette's ``WebSocket`` fits)."""

    async def receive(self) -> Mapping[str, Any]: ...

    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


OwnerLookup = Callable[[str], Awaitable[str | None]]
"""Job id -> its owner, ``None`` when there is no such job."""

Renew = Callable[[str], Awaitable[float | None]]
"""A fresh token -> its expiry (Unix time, ``None``: does not expire); raises
:class:`AuthRefused` when the token is invalid or belongs to someone else."""


class AuthRefused(Exception):
    """A token sent in an ``auth`` message was refused (the reason is the message)."""


# -- client messages ------------------------------------------------------------------------------
class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SubscribeMsg(_Msg):
    type: Literal["subscribe"]
    jobs: list[Annotated[str, Field(min_length=1, max_length=200)]] = Field(
        default_factory=list, max_length=MAX_SUBSCRIPTIONS
    )
    all: bool = False
    last_event_id: dict[str, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)


class UnsubscribeMsg(_Msg):
    type: Literal["unsubscribe"]
    jobs: list[str] = Field(default_factory=list, max_length=MAX_SUBSCRIPTIONS)
    all: bool = False


class PingMsg(_Msg):
    type: Literal["ping"]
    id: str | int | None = None


class PongMsg(_Msg):
    type: Literal["pong"]
    id: str | int | None = None


class AuthMsg(_Msg):
    """A fresh access token for a long session (same principal), before the old one expires."""

    type: Literal["auth"]
    token: str = Field(min_length=1, max_length=4096)


ClientMessage = Annotated[
    SubscribeMsg | UnsubscribeMsg | PingMsg | PongMsg | AuthMsg, Field(discriminator="type")
]
_client_message: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_CLIENT_TYPES = ("subscribe", "unsubscribe", "ping", "pong", "auth")


def _dump(obj: dict[str, Any]) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Session:
    """Serve one accepted WebSocket until it closes."""

    def __init__(
        self,
        *,
        hub: Hub,
        transport: Transport,
        client_id: str,
        principal_id: str,
        is_admin: bool,
        owner_lookup: OwnerLookup,
        settings: EventSettings,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        max_json_depth: int = MAX_JSON_DEPTH,
        expires_at: float | None = None,
        renew: Renew | None = None,
    ) -> None:
        self.hub = hub
        self.expires_at = expires_at  # Unix time the principal's token expires (None: never)
        self._renew = renew
        self._expiry_warned = False
        self.transport = transport
        self.client_id = client_id
        self.principal_id = principal_id
        self.is_admin = is_admin
        self._lookup = owner_lookup
        self._settings = settings
        self._max_message_bytes = max_message_bytes
        self._max_json_depth = max_json_depth
        self._last_frame: str | None = None  # an error sent just before the close frame
        self.queue = SendQueue(
            settings.send_queue_size, full_timeout_s=settings.slow_client_timeout_s
        )
        self.jobs: set[str] = set()  # subscribed by id
        self.all_jobs = False
        self._sent: dict[str, int] = {}  # job id -> highest seq sent (or resumed from)
        self._close: tuple[int, str] | None = None
        self._awaiting_pong_since: float | None = None
        self._next_ping = 0.0
        self._ping_due = False
        self._sending_since: float | None = None  # loop time a blocked send started
        self._abort_send = False
        self._writer: asyncio.Task[None] | None = None
        self._writer_idle = False  # the writer waits for the queue (which was empty)
        self._inflight: asyncio.Task[None] | None = None  # a fast-path send that had to wait
        self.close_code: int | None = None  # what the session closed with, for logs/tests

    @property
    def closing(self) -> tuple[int, str] | None:
        """``(code, reason)`` once a close was requested, else ``None``."""
        return self._close

    # -- hub callbacks ------------------------------------------------------------------------
    def deliver(self, event: BusEvent) -> None:
        if self._close is not None:
            return
        if self._writer_idle and self._inflight is None and not self._ping_due and not self.queue:
            # Idle connection: send now (see the module docstring). Nothing is queued or being
            # sent, so this frame cannot overtake another.
            if self._claim(event.job_id, event.seq):
                self._send_now(event.wire)
                if event.terminal:
                    self._after_terminal(event.job_id)
            return
        item = Outgoing(
            event.wire, event.job_id, event.seq, event.coalescible, terminal=event.terminal
        )
        if not self.queue.offer(item):
            self.request_close(
                CloseCode.TRY_AGAIN_LATER,
                "client too slow: send queue full; reconnect and resume with last_event_id",
            )

    def resync(self) -> None:
        """The bus may have missed events: replay every watched job from what was sent."""
        for job_id in set(self.jobs) | set(self._sent):
            self._enqueue(Outgoing("", job_id, 0, replay=True))

    def replaced(self) -> None:
        self.request_close(CloseCode.REPLACED, "replaced by a newer connection with this client_id")

    @property
    def tick_period(self) -> float:
        """How often :meth:`tick` must run for this session's timings to hold."""
        settings = self._settings
        shortest = min(
            settings.ping_interval_s, settings.pong_timeout_s, settings.slow_client_timeout_s
        )
        return max(0.01, min(1.0, shortest / 4))

    def tick(self, now: float) -> None:
        """Time-based checks, run by the hub's ticker: stuck send, missed pong, ping due."""
        since = self._sending_since
        if since is not None and now - since > self._settings.slow_client_timeout_s:
            self.request_close(
                CloseCode.TRY_AGAIN_LATER,
                "client too slow: a send stayed blocked; reconnect and resume with last_event_id",
            )
            if not self._abort_send:
                self._abort_send = True
                if self._inflight is not None:
                    self._inflight.cancel()
                if self._writer is not None:
                    self._writer.cancel()
            return
        if self._close is not None:
            return
        if self.expires_at is not None and self._check_expiry():
            return
        waiting = self._awaiting_pong_since
        if waiting is not None and now - waiting >= self._settings.pong_timeout_s:
            self.request_close(
                CloseCode.HEARTBEAT_TIMEOUT, f"no pong within {self._settings.pong_timeout_s:g} s"
            )
            return
        if now >= self._next_ping:
            self._next_ping = now + self._settings.ping_interval_s
            self._ping_due = True
            if waiting is None:
                self._awaiting_pong_since = now
            self.queue.wake()

    def _check_expiry(self) -> bool:
        """Close with 4401 once the token expired (True); warn once shortly before."""
        assert self.expires_at is not None
        left = self.expires_at - time.time()
        if left <= 0:
            self._fail(
                CloseCode.TOKEN_EXPIRED,
                "token_expired",
                'the access token expired; send {"type": "auth", "token": ...} before expiry',
            )
            return True
        if not self._expiry_warned and left <= EXPIRY_WARNING_S:
            self._expiry_warned = True
            self._enqueue_json(
                {"type": "auth.expiring", "expires_at": _iso_unix(self.expires_at), "ts": iso_ts()}
            )
        return False

    async def _reauthenticate(self, token: str) -> None:
        if self._renew is not None:
            try:
                expires = await self._renew(token)
            except AuthRefused as exc:
                self._fail(CloseCode.POLICY_VIOLATION, "invalid_token", str(exc))
                return
            self.expires_at = expires
            self._expiry_warned = False
        self._enqueue_json(
            {"type": "authenticated", "expires_at": _iso_unix(self.expires_at), "ts": iso_ts()}
        )

    def _fail(self, code: int, error: str, detail: str) -> None:
        """Send ``{"type": "error", "code": error, "detail"}``, then close with ``code``."""
        if self._close is None:
            self._last_frame = _dump({"type": "error", "code": error, "detail": detail})
            self.request_close(code, detail[:120])

    def request_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (int(code), reason)
            self.queue.wake()

    # -- main loop ----------------------------------------------------------------------------
    async def run(self) -> None:
        """Read client messages until the socket closes (the socket must be accepted)."""
        self._next_ping = asyncio.get_running_loop().time() + self._settings.ping_interval_s
        self.hub.register(self)
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.client_id}")
        self._enqueue_json(
            {
                "type": "welcome",
                "client_id": self.client_id,
                "ping_interval_s": self._settings.ping_interval_s,
                "pong_timeout_s": self._settings.pong_timeout_s,
                "replay_limit": self._settings.replay_limit,
                "token_expires_at": _iso_unix(self.expires_at),
                "ts": iso_ts(),
            }
        )
        try:
            await self._read_loop()
        finally:
            self.hub.unregister(self, self.jobs, all_of=self._all_key() if self.all_jobs else None)
            if self._close is None:
                self._close = (CloseCode.NORMAL, "")
            self.queue.wake()
            writer = self._writer
            if writer is not None and not writer.done():
                # Give the writer a moment to send the close frame, then stop it.
                done, _ = await asyncio.wait({writer}, timeout=1.0)
                if not done:
                    writer.cancel()
                    await asyncio.gather(writer, return_exceptions=True)
            inflight = self._inflight
            if inflight is not None and not inflight.done():
                inflight.cancel()
                await asyncio.gather(inflight, return_exceptions=True)

    async def _read_loop(self) -> None:
        while True:
            message = await self.transport.receive()
            kind = message.get("type")
            if kind == "websocket.disconnect":
                if self.close_code is None:
                    self.close_code = int(message.get("code") or CloseCode.NORMAL)
                return
            if kind != "websocket.receive" or self._close is not None:
                continue
            text = message.get("text")
            if text is None:
                self._fail(
                    CloseCode.UNSUPPORTED_DATA,
                    "unsupported_data",
                    "binary frames are not supported",
                )
                continue
            try:
                obj = parse_message(
                    text, max_bytes=self._max_message_bytes, max_depth=self._max_json_depth
                )
            except (MessageTooBig, InvalidPayload) as exc:
                self._fail(exc.close_code, exc.code, exc.detail)
                continue
            await self._handle(obj)

    # -- client messages ------------------------------------------------------------------------
    def _error(self, code: str, detail: str, **extra: Any) -> None:
        self._enqueue_json({"type": "error", "code": code, "detail": detail, **extra})

    async def _handle(self, obj: Any) -> None:
        if not isinstance(obj, dict):
            self._error("invalid_message", "a message must be a JSON object")
            return
        kind = obj.get("type")
        if kind not in _CLIENT_TYPES:
            self._error(
                "unknown_type",
                f"unknown message type {str(kind)[:40]!r}; expected one of {list(_CLIENT_TYPES)}",
            )
            return
        try:
            msg = _client_message.validate_python(obj)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first.get("loc", ()))
            self._error("invalid_message", f"{where}: {first.get('msg')}", request=kind)
            return
        if isinstance(msg, PingMsg):
            reply: dict[str, Any] = {"type": "pong", "ts": iso_ts()}
            if msg.id is not None:
                reply["id"] = msg.id
            self._enqueue_json(reply)
        elif isinstance(msg, PongMsg):
            self._awaiting_pong_since = None
        elif isinstance(msg, SubscribeMsg):
            await self._subscribe(msg)
        elif isinstance(msg, AuthMsg):
            await self._reauthenticate(msg.token)
        else:
            self._unsubscribe(msg)

    def _all_key(self) -> str | None:
        return None if self.is_admin else self.principal_id

    async def _check(self, job_id: str) -> bool:
        """Look the job up; queue an ``error`` and return False when it may not be watched."""
        owner = await self._lookup(job_id)
        if owner is None or not (self.is_admin or owner == self.principal_id):
            # Another user's job looks exactly like a missing one (no existence leak).
            self._error("unknown_job", f"no job {job_id[:100]!r}", job_id=job_id[:100])
            return False
        return True

    async def _subscribe(self, msg: SubscribeMsg) -> None:
        if not msg.jobs and not msg.all:
            self._error(
                "invalid_message", "subscribe needs 'jobs' or 'all': true", request="subscribe"
            )
            return
        # Phase 1 (awaits): check every job. Phase 2 (no awaits): register, ack, queue replays,
        # so no live event of a new job can be queued ahead of its replay.
        wanted = list(dict.fromkeys(msg.jobs))
        allowed = [job_id for job_id in wanted if job_id in self.jobs or await self._check(job_id)]
        resume_only = [
            job_id
            for job_id in msg.last_event_id
            if msg.all and job_id not in wanted and job_id not in self._sent
        ]
        resume_allowed = [job_id for job_id in resume_only if await self._check(job_id)]
        if self._close is not None:
            return
        new_jobs = [job_id for job_id in allowed if job_id not in self.jobs]
        room = MAX_SUBSCRIPTIONS - len(self.jobs)
        if len(new_jobs) > room:
            self._error(
                "too_many_subscriptions",
                f"at most {MAX_SUBSCRIPTIONS} jobs per connection",
                jobs=new_jobs[room:],
            )
            new_jobs = new_jobs[:room]
            allowed = [j for j in allowed if j in self.jobs or j in new_jobs]
        for job_id in new_jobs:
            self.jobs.add(job_id)
            self.hub.add_job(self, job_id)
            self._sent[job_id] = msg.last_event_id.get(job_id, 0)
        for job_id in resume_allowed:
            self._sent[job_id] = msg.last_event_id[job_id]
        if msg.all and not self.all_jobs:
            self.all_jobs = True
            self.hub.add_all(self, self._all_key())
        self._enqueue_json({"type": "subscribed", "jobs": allowed, "all": self.all_jobs})
        for job_id in [*new_jobs, *resume_allowed]:
            self._enqueue(Outgoing("", job_id, 0, replay=True))

    def _unsubscribe(self, msg: UnsubscribeMsg) -> None:
        removed = [job_id for job_id in dict.fromkeys(msg.jobs) if job_id in self.jobs]
        for job_id in removed:
            self.jobs.discard(job_id)
            self.hub.remove_job(self, job_id)
            self._sent.pop(job_id, None)
        if msg.all and self.all_jobs:
            self.all_jobs = False
            self.hub.remove_all(self, self._all_key())
        self._enqueue_json({"type": "unsubscribed", "jobs": removed, "all": self.all_jobs})

    # -- sending --------------------------------------------------------------------------------
    def _enqueue(self, item: Outgoing) -> None:
        if self._close is None and not self.queue.offer(item):
            self.request_close(CloseCode.TRY_AGAIN_LATER, "client too slow: send queue full")

    def _enqueue_json(self, obj: dict[str, Any]) -> None:
        self._enqueue(Outgoing(_dump(obj)))

    async def _send(self, text: str) -> None:
        # The hub's ticker cancels a send blocked longer than slow_client_timeout_s.
        self._sending_since = asyncio.get_running_loop().time()
        try:
            await self.transport.send_text(text)
        finally:
            self._sending_since = None

    def _send_now(self, text: str) -> None:
        """Start sending ``text`` from a plain callback; a send that must wait becomes a task.

        Only called when nothing else is being sent or queued (see :meth:`deliver`).
        """
        coro = self.transport.send_text(text)
        try:
            waiting = coro.send(None)
        except StopIteration:
            return  # sent without waiting: the usual case
        except Exception as exc:  # usually the client went away
            log.debug("ws %s: send failed: %s", self.client_id, exc)
            self.request_close(1011, "server error while sending; reconnect and resume")
            return
        # The socket cannot take it now (a slow reader): finish in a task; the writer waits for
        # it before sending anything else, and the ticker aborts it if it stays blocked.
        loop = asyncio.get_running_loop()
        self._sending_since = loop.time()
        task = loop.create_task(_finish(coro, waiting), name=f"ws-send-{self.client_id}")
        self._inflight = task
        task.add_done_callback(self._inflight_done)
        self.queue.wake()

    def _inflight_done(self, task: asyncio.Task[None]) -> None:
        if self._inflight is task:
            self._inflight = None
            self._sending_since = None
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.debug("ws %s: send failed: %s", self.client_id, exc)
            self.request_close(1011, "server error while sending; reconnect and resume")
        self.queue.wake()

    def _wanted(self, job_id: str) -> bool:
        return job_id in self.jobs or self.all_jobs

    def _claim(self, job_id: str, seq: int) -> bool:
        """Whether event ``seq`` of ``job_id`` is to be sent; if so, record it as sent."""
        if not (self.all_jobs or job_id in self.jobs) or seq <= self._sent.get(job_id, 0):
            return False
        self._sent[job_id] = seq
        return True

    def _after_terminal(self, job_id: str) -> None:
        if job_id not in self.jobs:
            # Seen through "all": forget it so the map does not grow with every job ever run.
            self._sent.pop(job_id, None)

    async def _send_event(self, item: Outgoing) -> None:
        job_id = item.job_id
        assert job_id is not None
        if self._claim(job_id, item.seq):
            await self._send(item.text)
            if item.terminal:
                self._after_terminal(job_id)

    async def _fetch_replay(self, job_id: str, after: int) -> Replay | None:
        try:
            return await self.hub.bus.replay(job_id, after)
        except Exception as exc:  # the bus (Redis) is unreachable: let the client come back
            log.warning("ws %s: replay of %s failed: %s", self.client_id, job_id, exc)
            self.request_close(1011, "event replay unavailable; reconnect and resume")
            return None

    async def _send_replay(self, job_id: str) -> None:
        if not self._wanted(job_id):
            return
        after = self._sent.get(job_id, 0)
        replay = await self._fetch_replay(job_id, after)
        if replay is None:
            return
        if after > replay.last_seq or replay.truncated_after(after):
            await self._send(
                _dump(
                    {
                        "type": "replay.truncated",
                        "job_id": job_id,
                        "after_seq": after,
                        "first_seq": replay.first_seq,
                        "last_seq": replay.last_seq,
                    }
                )
            )
            if after > replay.last_seq:  # counter restarted (buffer expired, memory bus restarted)
                self._sent[job_id] = after = 0
                replay = await self._fetch_replay(job_id, 0)
                if replay is None:
                    return
        for event in replay.events:
            if event.seq > self._sent.get(job_id, 0):
                self._sent[job_id] = event.seq
                await self._send(event.wire)

    async def _write_loop(self) -> None:
        try:
            while self._close is None:
                if self._inflight is not None:  # a fast-path send is still going: after it
                    await asyncio.wait((self._inflight,))
                    continue
                if self._ping_due:
                    self._ping_due = False
                    await self._send(_dump({"type": "ping", "ts": iso_ts()}))
                    continue
                item = self.queue.pop()
                if item is None:
                    self._writer_idle = True
                    try:
                        await self.queue.wait()
                    finally:
                        self._writer_idle = False
                elif item.replay:
                    assert item.job_id is not None
                    await self._send_replay(item.job_id)
                elif item.job_id is not None:
                    await self._send_event(item)
                else:
                    await self._send(item.text)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if not self._abort_send or task is None:
                raise
            task.uncancel()  # our own ticker stopped a blocked send: close below
        except Exception as exc:  # usually the client went away mid-send
            log.debug("ws %s: writer stopped: %s", self.client_id, exc)
            if self._close is None:
                self._close = (1011, "server error while sending; reconnect and resume")
        inflight = self._inflight
        if inflight is not None and not self._abort_send:
            # A fast-path send is still waiting for the socket: the close frame goes after it
            # (the ticker aborts it if it stays blocked).
            await asyncio.wait((inflight,))
        code, reason = self._close or (CloseCode.NORMAL, "")
        self.close_code = code
        self.queue.clear()
        last, self._last_frame = self._last_frame, None
        if last is not None and not self._abort_send:
            try:
                await self._send(last)
            except Exception as exc:
                log.debug("ws %s: error frame not sent: %s", self.client_id, exc)
        if code != CloseCode.NORMAL:
            log.info("ws %s: closing with %d (%s)", self.client_id, code, reason)
        try:
            await self.transport.close(code, reason)
        except Exception as exc:
            log.debug("ws %s: close failed: %s", self.client_id, exc)


@types.coroutine
def _resume(coro: Coroutine[Any, Any, None], waiting: Any) -> Generator[Any, Any, None]:
    """Continue ``coro``, started outside a task and suspended on ``waiting`` (what it yielded).

    The running task first waits for ``waiting`` (as if ``coro`` had yielded it to the task),
    then ``coro`` is resumed and driven to its end by ``yield from``.
    """
    try:
        yield waiting
    except BaseException:
        coro.close()  # cancelled while the send waited for the socket
        raise
    yield from coro


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    await _resume(coro, waiting)


def _iso_unix(ts: float | None) -> str | None:
    return None if ts is None else iso_ts(datetime.fromtimestamp(ts, UTC))
