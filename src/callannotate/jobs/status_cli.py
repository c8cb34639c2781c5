"""``callannotate status``: workers and queues of a running server, as tables or JSON.

It asks ``GET /admin/workers`` and ``GET /admin/queues`` with the CLI's usual credential
(``--token`` or ``CALLANNOTATE_TOKEN``, an admin's access token or API key, sent as
``Authorization: Bearer``), so it needs an admin (or a server with ``auth.enabled`` off).
"""

from __future__ import annotations

import argparse
import json
import os
from datetime import datetime
from typing import Any

WORKER_COLUMNS = (
    "HOST",
    "PID",
    "EXECUTOR",
    "NAME",
    "CONC",
    "RUNNING",
    "DONE",
    "RSS",
    "MODELS",
    "STARTED",
    "HEARTBEAT",
)


def _mib(n: Any) -> str:
    return f"{int(n or 0) / (1 << 20):.0f} MiB"


def _age(seconds: Any) -> str:
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def _when(value: object) -> str:
    try:
        return datetime.fromisoformat(str(value)).strftime("%Y-%m-%d %H:%M:%S")
    except ValueError:
        return str(value)


def table(header: tuple[str, ...] | list[str], rows: list[list[str]]) -> list[str]:
    """Columns padded to their widest cell (the last column is not padded)."""
    widths = [max(len(str(r[i])) for r in [list(header), *rows]) for i in range(len(header))]
    lines = []
    for row in [list(header), *rows]:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths[:-1], strict=True)]
        lines.append("  ".join([*cells, str(row[-1])]).rstrip())
    return lines


def format_workers(body: dict[str, Any]) -> list[str]:
    workers = body.get("workers", [])
    out = [
        f"Workers (executor {body.get('executor')}): {body.get('alive', 0)} alive, "
        f"{body.get('lost', 0)} lost (lost after {body.get('lost_after_s')} s without heartbeat)"
    ]
    if not workers:
        return [*out, "  no worker has written a heartbeat"]
    rows = []
    for w in workers:
        running = ",".join(w.get("jobs_running") or []) or "-"
        heartbeat = _age(w.get("heartbeat_age_s")) + " ago" + ("  LOST" if w.get("lost") else "")
        rows.append(
            [
                str(w.get("host")),
                str(w.get("pid")),
                str(w.get("executor")),
                str(w.get("name")),
                str(w.get("concurrency")),
                running,
                str(w.get("jobs_done", 0)),
                _mib(w.get("rss_bytes")),
                ",".join(w.get("models_loaded") or []) or "-",
                _when(w.get("started_at")),
                heartbeat,
            ]
        )
    return [*out, *("  " + line for line in table(WORKER_COLUMNS, rows))]


def _priorities(by_priority: dict[str, int]) -> str:
    return ", ".join(f"p{p}: {n}" for p, n in by_priority.items()) or "-"


def format_queues(body: dict[str, Any]) -> list[str]:
    q = body["queue"]
    out = [
        f"Queue folder: {q['depth']} waiting (oldest {_age(q.get('oldest_waiting_s'))}; "
        f"by priority {_priorities(q.get('waiting_by_priority') or {})})",
        "  states: " + ", ".join(f"{state} {n}" for state, n in q["states"].items()),
    ]
    rows = [
        [
            f"last {_age(w['window_s'])}",
            str(w["completed"]),
            str(w["failed"]),
            str(w["cancelled"]),
        ]
        for w in q["finished"]
    ]
    out += ["  " + line for line in table(["FINISHED", "COMPLETED", "FAILED", "CANCELLED"], rows)]
    light = body.get("light") or []
    if light:
        out.append("Light tasks:")
        rows = [
            [
                row["kind"],
                str(row["waiting"]),
                str(row["delayed"]),
                str(row["running"]),
                str(row["orphaned"]),
                _age(row.get("oldest_waiting_s")),
            ]
            for row in light
        ]
        header = ["KIND", "WAITING", "BACKOFF", "RUNNING", "ORPHANED", "OLDEST"]
        out += ["  " + line for line in table(header, rows)]
    broker = body.get("broker")
    if body.get("broker_error"):
        out.append(f"Celery queues: cannot read the broker: {body['broker_error']}")
    elif broker is not None:
        out.append(f"Celery queues ({broker['unacked']} delivered, not acknowledged):")
        rows = [
            [
                b["name"],
                b["kind"],
                str(b["depth"]),
                _age(b.get("oldest_waiting_s")),
                _priorities(b.get("by_priority") or {}),
            ]
            for b in broker["queues"]
        ]
        header = ["QUEUE", "KIND", "DEPTH", "OLDEST", "BY PRIORITY"]
        out += ["  " + line for line in table(header, rows)]
    return out


def _cmd_status(args: argparse.Namespace) -> int:
    from callannotate.cli import _request

    workers = _request(args, "GET", "/admin/workers").json()
    queues = _request(args, "GET", "/admin/queues").json()
    if args.json:
        print(json.dumps({"workers": workers, "queues": queues}, indent=2))
        return 0
    print("\n".join([*format_workers(workers), "", *format_queues(queues)]))
    return 0


def add_parser(subparsers: Any) -> None:
    from callannotate.cli import URL_HELP, positive_seconds

    p = subparsers.add_parser(
        "status",
        help="workers (heartbeats, memory, jobs) and queues (depth, age, throughput) of a "
        "running server (admin)",
    )
    p.add_argument("--url", help=URL_HELP)
    p.add_argument("--timeout", type=positive_seconds, default=30.0, help="HTTP timeout, seconds")
    p.add_argument(
        "--token",
        default=os.environ.get("CALLANNOTATE_TOKEN"),
        help="an admin's access token or API key, sent as 'Authorization: Bearer' "
        "(CALLANNOTATE_TOKEN)",
    )
    p.add_argument("--json", action="store_true", help="print both answers as one JSON object")
    p.set_defaults(func=_cmd_status)
