"""``callannotate healthcheck``: exit 0 when healthy, 1 when not (container health checks).

* default: ``GET /ready`` of the API (``--url``, ``CALLANNOTATE_URL``, or the configured
  ``api.host:api.port``); ``--live`` asks ``GET /health`` instead (the process answers);
* ``--local``: no HTTP, the dependency checks run here (data folder space, database, Redis,
  running jobs' heartbeats) — for a ``callannotate worker`` container, which has no API.

One line goes to stdout (``ready`` or ``not ready: ...``), so a container runtime's health log
says why.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from callannotate.config import Settings

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


def _default_url(settings: Settings) -> str:
    host = settings.api.host
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.api.port}"


def _over_http(args: argparse.Namespace, settings: Settings) -> int:
    import httpx

    url = (args.url or os.environ.get("CALLANNOTATE_URL") or _default_url(settings)).rstrip("/")
    path = "/health" if args.live else "/ready"
    try:
        response = httpx.get(url + path, timeout=args.timeout, verify=not args.insecure)
    except (httpx.HTTPError, httpx.InvalidURL) as exc:  # InvalidURL is no HTTPError
        print(f"not ready: {url}{path}: {type(exc).__name__}: {exc}")
        return EXIT_UNHEALTHY
    if response.status_code == 200:
        print("alive" if args.live else "ready")
        return EXIT_HEALTHY
    detail = ""
    try:
        body: Any = response.json()
        detail = str(body.get("detail") or "") if isinstance(body, dict) else ""
    except ValueError:
        pass
    print(f"not ready: HTTP {response.status_code} {detail}".rstrip())
    return EXIT_UNHEALTHY


def _local(settings: Settings) -> int:
    from callannotate.jobs.filequeue import FileQueue
    from callannotate.observability.health import dependency_checks

    results = dependency_checks(settings, FileQueue(settings.queue_dir, settings.queue))
    failing = [r for r in results if not r.ok]
    if failing:
        print("not ready: " + "; ".join(f"{r.name}: {r.outcome}" for r in failing))
        return EXIT_UNHEALTHY
    print("ready: " + "; ".join(f"{r.name}: {r.outcome}" for r in results))
    return EXIT_HEALTHY


def _cmd_healthcheck(args: argparse.Namespace) -> int:
    settings = Settings()
    if args.local:
        return _local(settings)
    return _over_http(args, settings)


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "healthcheck",
        help="exit 0 when the service is ready (container health checks), 1 otherwise",
    )
    p.add_argument("--url", help="API base URL (default: CALLANNOTATE_URL or api.host:api.port)")
    p.add_argument("--live", action="store_true", help="ask /health (alive) instead of /ready")
    p.add_argument(
        "--local",
        action="store_true",
        help="check data folder, database, Redis and heartbeats here, without HTTP (workers)",
    )
    from callannotate.cli import positive_seconds

    p.add_argument("--timeout", type=positive_seconds, default=5.0, help="seconds (default 5)")
    p.add_argument("--insecure", action="store_true", help="do not verify the TLS certificate")
    p.set_defaults(func=_cmd_healthcheck)
