"""Locust users of the load test (``benchmarks/load.py`` runs this file; see its docstring).

Not meant to be started by hand: ``load.py`` starts the server, creates the accounts and the
completed jobs, and passes them in a JSON plan named by ``$CALLANNOTATE_LOAD_PLAN``:

    {"wav": "/path/short.wav", "steps": "vad", "wait_s": [0.2, 0.6],
     "ws_session_s": [5, 15], "api_weight": 4, "ws_weight": 1,
     "mix": {"status": 20, "result": 3, "list": 2, "upload": 1, "isolation": 1},
     "accounts": [{"name": "load0", "key": "ca_...", "completed": ["<job id>", ...]}, ...]}

Two kinds of simulated clients share the accounts round robin:

* :class:`ApiClient` (FastHttp): polls job status, lists jobs, downloads results of
  completed jobs, uploads the short WAV, and asks for another account's job (must be 404);
* :class:`EventSubscriber`: holds a ``/ws/{client_id}`` session (token in
  ``Sec-WebSocket-Protocol``), subscribed to all of its account's jobs, for a few seconds,
  answers the server's pings, then reconnects. Each job event received is one "request" whose
  time is the delivery delay (event ``ts`` stamped by the server → received here); an event
  of a job that another account uploaded is a failure (isolation).

Request names (the rows of the report) are the ``NAME_*`` constants of ``load.py``. When locust
quits, the figures of every request type are written as JSON to ``$CALLANNOTATE_LOAD_STATS``.
"""

from __future__ import annotations

import itertools
import json
import os
import random
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from locust import FastHttpUser, User, between, events, task
from locust.env import Environment
from locust.stats import StatsEntry
from websockets.exceptions import WebSocketException

from load import (
    NAME_ISOLATION,
    NAME_LIST,
    NAME_RESULT,
    NAME_STATUS,
    NAME_UPLOAD,
    NAME_WS_CONNECT,
    NAME_WS_EVENT,
)
from load_ws import BlockingWebSocket

PLAN: dict[str, Any] = json.loads(Path(os.environ["CALLANNOTATE_LOAD_PLAN"]).read_text())
ACCOUNTS: list[dict[str, Any]] = PLAN["accounts"]
WAV = Path(PLAN["wav"])
WAV_BYTES = WAV.read_bytes()
_next_account = itertools.count()
# job id -> account name, of every job this process uploaded or was given: a WebSocket event of
# a job of another account is an isolation failure.
JOB_OWNERS: dict[str, str] = {
    job_id: account["name"] for account in ACCOUNTS for job_id in account["completed"]
}


def _account() -> tuple[dict[str, Any], dict[str, Any]]:
    """(this client's account, another account) round robin over the plan's accounts."""
    i = next(_next_account)
    return ACCOUNTS[i % len(ACCOUNTS)], ACCOUNTS[(i + 1) % len(ACCOUNTS)]


def _multipart(fields: dict[str, str], filename: str, payload: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: audio/wav\r\n\r\n".encode()
        + payload
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


UPLOAD_BODY, UPLOAD_TYPE = _multipart({"steps": PLAN["steps"]}, WAV.name, WAV_BYTES)


class ApiClient(FastHttpUser):
    """A REST client of one account: mostly status polls, some uploads and downloads."""

    weight = int(PLAN["api_weight"])
    wait_time = between(*PLAN["wait_s"])
    network_timeout = 60.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        account, other = _account()
        self.account: str = account["name"]
        self.headers = {"Authorization": f"Bearer {account['key']}"}
        self.completed: list[str] = list(account["completed"])
        self.foreign: list[str] = list(other["completed"]) if other is not account else []
        self.uploaded: list[str] = []

    def status(self) -> None:
        pool = self.uploaded[-5:] or self.completed
        job_id = random.choice(pool)
        self.client.get(f"/jobs/{job_id}", headers=self.headers, name=NAME_STATUS)

    def result(self) -> None:
        job_id = random.choice(self.completed)
        self.client.get(f"/jobs/{job_id}/result", headers=self.headers, name=NAME_RESULT)

    def listing(self) -> None:
        self.client.get("/jobs?limit=20", headers=self.headers, name=NAME_LIST)

    def upload(self) -> None:
        headers = dict(self.headers, **{"Content-Type": UPLOAD_TYPE})
        with self.client.post(
            "/jobs",
            data=UPLOAD_BODY,  # type: ignore[arg-type]  # bytes are sent as they are
            headers=headers,
            name=NAME_UPLOAD,
            catch_response=True,
        ) as response:
            if response.status_code != 202:
                response.failure(f"HTTP {response.status_code}: {(response.text or '')[:200]}")
                return
            job_id = response.json()["id"]
            JOB_OWNERS[job_id] = self.account
            self.uploaded.append(job_id)
            del self.uploaded[:-5]

    def isolation(self) -> None:
        if not self.foreign:
            return
        job_id = random.choice(self.foreign)
        with self.client.get(
            f"/jobs/{job_id}", headers=self.headers, name=NAME_ISOLATION, catch_response=True
        ) as response:
            if response.status_code == 404:
                response.success()
            else:
                response.failure(f"another user's job answered {response.status_code}, not 404")

    # Task weights from the plan (``load.py --mix``), as locust takes them: a task listed
    # N times has weight N; a weight of 0 leaves it out.
    tasks = [  # noqa: RUF012  (locust's own class attribute, read once per class)
        fn
        for key, fn in (
            ("status", status),
            ("result", result),
            ("list", listing),
            ("upload", upload),
            ("isolation", isolation),
        )
        for _ in range(int(PLAN["mix"][key]))
    ]


def _record(name: str, ms: float, length: int, exc: Exception | None) -> None:
    """One WebSocket "request" in locust's statistics."""
    events.request.fire(  # type: ignore[no-untyped-call]
        request_type="WS",
        name=name,
        response_time=ms,
        response_length=length,
        exception=exc,
        context={},
    )


def _event_delay_ms(ts: str) -> float:
    sent = datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
    return max(0.0, (time.time() - sent) * 1000.0)


class EventSubscriber(User):
    """A WebSocket client of one account, watching all of that account's jobs."""

    weight = int(PLAN["ws_weight"])
    wait_time = between(0.0, 0.5)

    def on_start(self) -> None:
        account, _ = _account()
        self.account: str = account["name"]
        self.key: str = account["key"]
        self.client_id = f"load-{uuid.uuid4().hex[:12]}"
        assert self.host is not None, "load.py passes --host"
        self.url = self.host.replace("http://", "ws://", 1) + f"/ws/{self.client_id}"

    def _fire(self, name: str, started: float, length: int, exc: Exception | None) -> None:
        _record(name, (time.perf_counter() - started) * 1000.0, length, exc)

    def _open(self) -> BlockingWebSocket | None:
        """Connect, read ``welcome``, subscribe to all of the account's jobs."""
        started = time.perf_counter()
        ws: BlockingWebSocket | None = None
        try:
            ws = BlockingWebSocket(self.url, ["bearer", self.key], timeout=30)
            if ws.subprotocol != "bearer":
                raise RuntimeError(f"server chose subprotocol {ws.subprotocol!r}, not bearer")
            welcome = json.loads(ws.recv(timeout=30))
            if welcome.get("type") != "welcome":
                raise RuntimeError(f"expected welcome, got {welcome.get('type')}")
            ws.send(json.dumps({"type": "subscribe", "all": True}))
            while (reply := json.loads(ws.recv(timeout=30))).get("type") != "subscribed":
                if reply.get("type") == "error":
                    raise RuntimeError(f"subscribe refused: {reply}")
        except (OSError, WebSocketException, RuntimeError, ValueError) as exc:
            self._fire(NAME_WS_CONNECT, started, 0, exc)
            if ws is not None:
                ws.close()
            return None
        self._fire(NAME_WS_CONNECT, started, 0, None)
        return ws

    @task
    def session(self) -> None:
        ws = self._open()
        if ws is None:
            return
        end = time.monotonic() + random.uniform(*PLAN["ws_session_s"])
        try:
            while (left := end - time.monotonic()) > 0:
                try:
                    raw = ws.recv(timeout=min(1.0, left))
                except TimeoutError:
                    continue
                message = json.loads(raw)
                kind = str(message.get("type", ""))
                if kind == "ping":
                    ws.send('{"type":"pong"}')
                elif kind.startswith("job."):
                    owner = JOB_OWNERS.get(str(message.get("job_id")), self.account)
                    leak = None
                    if owner != self.account:
                        leak = RuntimeError(f"{self.account} got an event of {owner}'s job")
                    _record(NAME_WS_EVENT, _event_delay_ms(message["ts"]), len(raw), leak)
                elif kind == "error":
                    raise RuntimeError(f"server error message: {raw[:200]!r}")
        except (OSError, WebSocketException, RuntimeError) as exc:
            self._fire(NAME_WS_EVENT, time.perf_counter(), 0, exc)
        finally:
            ws.close()


def _row(entry: StatsEntry, name: str) -> dict[str, Any]:
    counted = entry.num_requests > 0
    return {
        "type": entry.method or "",
        "name": name,
        "requests": entry.num_requests,
        "failures": entry.num_failures,
        "rps": entry.total_rps,
        **{
            f"p{q}_ms": entry.get_response_time_percentile(q / 100) if counted else None
            for q in (50, 95, 99)
        },
        "max_ms": entry.max_response_time if counted else None,
    }


@events.quitting.add_listener  # type: ignore[untyped-decorator]
def write_stats(environment: Environment, **_: Any) -> None:
    """Every request type's figures (locust's own rounding of times) for ``load.py``."""
    target = os.environ.get("CALLANNOTATE_LOAD_STATS")
    if not target:
        return
    stats = environment.stats
    rows = [_row(e, e.name) for e in sorted(stats.entries.values(), key=lambda e: e.name)]
    rows.append(_row(stats.total, "Aggregated"))
    failures = [f"{e.occurrences}x {e.method} {e.name}: {e.error}" for e in stats.errors.values()]
    Path(target).write_text(json.dumps({"rows": rows, "failures": failures}))
