"""REST and WebSocket client of the Compose end-to-end test (scripts/docker/e2e.sh).

Each subcommand is one step of the test, so that the shell script can act on the containers
(kill a worker) between them; each prints one JSON line and exits non-zero with a message on
the first thing that is not as expected::

    e2e_client.py token URL USER            password on stdin -> {"token": ...}
    e2e_client.py submit URL FILE           -> {"job_id": ...}          (token in E2E_TOKEN)
    e2e_client.py wait-started URL JOB      WebSocket until job.started -> {"worker": ...}
    e2e_client.py follow URL JOB            WebSocket until job.completed -> {"events": ...}
    e2e_client.py report URL JOB OUTDIR     export json + HTML report -> {"utterances": ...}
    e2e_client.py prometheus URL            until the API and the workers are scraped (up == 1)
    e2e_client.py health-times              `docker inspect` JSON on stdin -> seconds to healthy

Only the project's own dependencies are used (httpx, websockets).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

HTTP_TIMEOUT_S = 60.0


class E2EError(Exception):
    """A step did not go as expected."""


def _token() -> str:
    token = os.environ.get("E2E_TOKEN", "")
    if not token:
        raise E2EError("E2E_TOKEN is not set (run the token step first)")
    return token


def _client(url: str) -> httpx.Client:
    return httpx.Client(
        base_url=url,
        timeout=HTTP_TIMEOUT_S,
        headers={"Authorization": f"Bearer {_token()}"},
    )


def _check(response: httpx.Response, expected: int) -> Any:
    if response.status_code != expected:
        raise E2EError(
            f"{response.request.method} {response.request.url.path}: HTTP "
            f"{response.status_code} (expected {expected}): {response.text[:500]}"
        )
    ctype = response.headers.get("content-type", "")
    return response.json() if ctype.startswith("application/json") else response.content


def cmd_token(args: argparse.Namespace) -> dict[str, Any]:
    password = sys.stdin.readline().rstrip("\n")
    response = httpx.post(
        f"{args.url}/auth/token",
        data={"grant_type": "password", "username": args.user, "password": password},
        timeout=HTTP_TIMEOUT_S,
    )
    if response.status_code != 200:
        raise E2EError(f"POST /auth/token: HTTP {response.status_code}: {response.text[:300]}")
    body = response.json()
    return {"token": body["access_token"], "expires_in": body.get("expires_in")}


def cmd_submit(args: argparse.Namespace) -> dict[str, Any]:
    path = Path(args.file)
    with _client(args.url) as client, path.open("rb") as audio:
        job = _check(
            client.post(
                "/jobs",
                files={"file": (path.name, audio, "audio/wav")},
                data={"language": "en", "num_speakers": "2"},
            ),
            202,
        )
    return {"job_id": job["id"], "state": job["state"]}


def _ws_url(url: str) -> str:
    return url.replace("http://", "ws://", 1).replace("https://", "wss://", 1)


def _events(args: argparse.Namespace, until: set[str]) -> list[dict[str, Any]]:
    """Subscribe to one job (its retained events are replayed first) and collect its events
    until one of the types in ``until``; a ``job.failed`` is an error."""
    deadline = time.monotonic() + args.timeout
    events: list[dict[str, Any]] = []
    client_id = f"e2e-{uuid.uuid4().hex[:8]}"
    ws: ClientConnection
    with connect(
        f"{_ws_url(args.url)}/ws/{client_id}",
        additional_headers={"Authorization": f"Bearer {_token()}"},
        open_timeout=30,
    ) as ws:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                seen = [e["type"] for e in events]
                raise E2EError(
                    f"job {args.job}: none of {sorted(until)} in {args.timeout}s: {seen}"
                )
            try:
                message = json.loads(ws.recv(timeout=min(left, 30.0)))
            except TimeoutError:
                continue
            except ConnectionClosed as exc:
                raise E2EError(f"WebSocket closed: {exc}") from None
            kind = message.get("type")
            if kind == "welcome":
                ws.send(json.dumps({"type": "subscribe", "jobs": [args.job]}))
            elif kind == "ping":
                ws.send(json.dumps({"type": "pong"}))
            elif kind == "error":
                raise E2EError(f"WebSocket error: {message}")
            elif isinstance(kind, str) and kind.startswith("job."):
                events.append(message)
                if kind == "job.failed":
                    raise E2EError(f"job {args.job} failed: {message.get('data')}")
                if kind in until:
                    return events


def cmd_wait_started(args: argparse.Namespace) -> dict[str, Any]:
    events = _events(args, {"job.started"})
    return {
        "job_id": args.job,
        "worker": events[-1]["data"].get("worker"),
        "seq": events[-1]["seq"],
    }


def cmd_follow(args: argparse.Namespace) -> dict[str, Any]:
    events = _events(args, {"job.completed"})
    completed = events[-1]["data"]
    if completed.get("attempts", 0) < args.min_attempts:
        raise E2EError(f"job {args.job}: {completed} (expected >= {args.min_attempts} attempts)")
    types = [e["type"] for e in events]
    return {
        "job_id": args.job,
        "attempts": completed.get("attempts"),
        "events": {t: types.count(t) for t in dict.fromkeys(types)},
    }


def cmd_report(args: argparse.Namespace) -> dict[str, Any]:
    out = Path(args.outdir)
    out.mkdir(parents=True, exist_ok=True)
    with _client(args.url) as client:
        job = _check(client.get(f"/jobs/{args.job}"), 200)
        if job["state"] != "completed":
            raise E2EError(f"job {args.job} is {job['state']}, not completed")
        annotation = _check(client.get(f"/jobs/{args.job}/export", params={"format": "json"}), 200)
        html = _check(client.get(f"/jobs/{args.job}/report"), 200)
    if isinstance(annotation, bytes):
        annotation = json.loads(annotation)
    (out / f"{args.job}.json").write_text(json.dumps(annotation, indent=2))
    (out / f"{args.job}.html").write_bytes(html)
    words = sum(len(u.get("text", "").split()) for u in annotation.get("utterances", []))
    speakers = len(annotation.get("speakers", []))
    if not words or not speakers or b"<html" not in html[:2000].lower():
        raise E2EError(f"job {args.job}: empty report ({words} words, {speakers} speakers)")
    started, finished = (datetime.fromisoformat(job[k]) for k in ("started_at", "finished_at"))
    audio_s = float(annotation.get("recording", {}).get("duration", 0.0))
    run_s = (finished - started).total_seconds()
    return {
        "job_id": args.job,
        "speakers": speakers,
        "words": words,
        "html_bytes": len(html),
        "audio_s": round(audio_s, 1),
        "run_s": round(run_s, 1),  # the last attempt: claimed -> result stored
        "rtf": round(run_s / audio_s, 3) if audio_s else None,
        "queued_to_done_s": round(
            (finished - datetime.fromisoformat(job["created_at"])).total_seconds(), 1
        ),
    }


def _prom_query(client: httpx.Client, query: str) -> list[dict[str, Any]]:
    body = client.get("/api/v1/query", params={"query": query}).json()
    if body.get("status") != "success":
        raise E2EError(f"Prometheus query {query!r}: {body}")
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def cmd_prometheus(args: argparse.Namespace) -> dict[str, Any]:
    deadline = time.monotonic() + args.timeout
    wanted = {"callannotate": "up", "callannotate-workers": "up"}
    with httpx.Client(base_url=args.url, timeout=10.0) as client:
        while True:
            seen = {
                r["metric"]["job"]: r["value"][1]
                for r in _prom_query(client, 'up{job=~"callannotate|callannotate-workers"}')
            }
            if all(seen.get(job) == "1" for job in wanted):
                series = _prom_query(client, 'count({__name__=~"callannotate_.+"})')
                return {"up": seen, "callannotate_series": int(series[0]["value"][1])}
            if time.monotonic() > deadline:
                raise E2EError(f"Prometheus: targets not up after {args.timeout}s: {seen}")
            time.sleep(2)


def _docker_time(text: str) -> datetime:
    """Docker's RFC 3339 times carry nanoseconds; Python reads at most microseconds."""
    head, _, frac = text.rstrip("Z").partition(".")
    return datetime.fromisoformat(f"{head}.{(frac or '0')[:6]:0<6}+00:00")


def cmd_health_times(args: argparse.Namespace) -> dict[str, Any]:
    """From `docker inspect` JSON on stdin: seconds from each container's start to its first
    passing health check still in its (5-entry) health log; "<=" when older ones rolled off."""
    out: dict[str, Any] = {}
    for item in json.load(sys.stdin):
        name = item["Name"].lstrip("/")
        started = _docker_time(item["State"]["StartedAt"])
        log = (item["State"].get("Health") or {}).get("Log") or []
        passing = [_docker_time(e["End"]) for e in log if e["ExitCode"] == 0]
        if not passing:
            out[name] = None
            continue
        seconds = round((passing[0] - started).total_seconds(), 1)
        out[name] = f"<={seconds}" if len(log) >= 5 and log[0]["ExitCode"] == 0 else seconds
    return {"healthy_after_start_s": out}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("token")
    p.add_argument("url")
    p.add_argument("user")
    p.set_defaults(func=cmd_token)
    p = sub.add_parser("submit")
    p.add_argument("url")
    p.add_argument("file")
    p.set_defaults(func=cmd_submit)
    for name, func in (("wait-started", cmd_wait_started), ("follow", cmd_follow)):
        p = sub.add_parser(name)
        p.add_argument("url")
        p.add_argument("job")
        p.add_argument("--timeout", type=float, default=300.0)
        p.add_argument("--min-attempts", type=int, default=1)
        p.set_defaults(func=func)
    p = sub.add_parser("report")
    p.add_argument("url")
    p.add_argument("job")
    p.add_argument("outdir")
    p.set_defaults(func=cmd_report)
    p = sub.add_parser("health-times")
    p.set_defaults(func=cmd_health_times, url="")
    p = sub.add_parser("prometheus")
    p.add_argument("url")
    p.add_argument("--timeout", type=float, default=90.0)
    p.set_defaults(func=cmd_prometheus)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.url = args.url.rstrip("/")
    try:
        print(json.dumps(args.func(args)), flush=True)
    except (E2EError, httpx.HTTPError, OSError) as exc:
        print(f"e2e_client {args.command}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
