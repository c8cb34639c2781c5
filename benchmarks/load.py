"""Load test: locust, headless and bounded, against a real ``callannotate serve`` it starts.

What it does, in order (everything on 127.0.0.1, in a temporary data folder):

1. creates ``--accounts`` users (role ``user``) and one API key each with the CLI
   (``callannotate users create --password-stdin``, ``callannotate apikeys create``);
2. starts ``callannotate serve`` on a free port with authentication on (the default) and
   ``--workers`` embedded workers, or ``serve --no-workers`` plus a separate
   ``callannotate worker`` process (``--worker-process``; events then go through the Redis
   on 127.0.0.1:6379), with ``--processes N`` as ``serve --processes N --no-workers``, and
   waits for ``/ready``;
3. uploads ``--completed`` jobs per account and waits until they are completed, so result
   downloads have something to download;
4. runs locust (``benchmarks/locustfile.py``) headless for ``--run-time`` with ``--users``
   clients at ``--spawn-rate``: REST clients (status polls, job lists, result downloads,
   uploads of a short WAV, another account's job expecting 404) and WebSocket subscribers
   receiving their account's job events, in the ratio ``--ws-share``;
5. prints requests/s, p50/p95/p99 and failures per request type next to the targets
   (0 failures; ``GET /jobs/{id}`` p99 < 50 ms at 200 users on 2 cores), the server's own
   duration quantiles per route for the load phase (its ``/metrics`` histogram, scraped before
   and after with a token of this run), the server's CPU, and stops the server (and worker) by
   pid, also on failure. With ``--loop-debug-ms N`` it lists the event-loop callbacks of the
   server that held the loop longer than N ms, with their CPU (finds stalls; the server then
   runs asyncio's loop, timed, so do not compare that run's latencies).

Rate limits stay on, raised for the load-test accounts (``--rate-limits raised``, the
default): the default per-user budgets (30 reads/s) are for people, not for one account
driving 100 simulated clients. ``--rate-limits default`` keeps them, ``off`` disables them.

    .venv/bin/python benchmarks/load.py --users 200 --spawn-rate 20 --run-time 60s
    .venv/bin/python benchmarks/load.py --users 10 --spawn-rate 5 --run-time 15s --json-out s.json

The uploaded WAV is a 3 s LibriVox utterance from the shared data
(``asr/en/librivox/sense_and_sensibility_01_austen_64kb-0880.wav``) when present, otherwise
a synthesised 3 s tone. Uploaded jobs ask for ``--steps`` (default ``vad``: a worker keeps
up with fewer of them piling up; ``all`` runs the whole pipeline). Exit status: 1 when any
request failed (unless ``--allow-failures``), 2 when the set-up failed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))  # local_servers
from api_throughput import write_tone
from local_servers import callannotate_command, free_port

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("CALLANNOTATE_SHARED_DATA", REPO / ".." / "shared" / "data"))
SPEECH = SHARED / "asr" / "en" / "librivox" / "sense_and_sensibility_01_austen_64kb-0880.wav"
LOCUSTFILE = Path(__file__).resolve().parent / "locustfile.py"
# The request types of the report (rows), as the locustfile names them.
NAME_UPLOAD = "POST /jobs (upload)"
NAME_STATUS = "GET /jobs/{id}"
NAME_LIST = "GET /jobs"
NAME_RESULT = "GET /jobs/{id}/result"
NAME_ISOLATION = "GET /jobs/{id} (other user's: 404)"
NAME_WS_CONNECT = "WS /ws/{client_id} connect+subscribe"
NAME_WS_EVENT = "WS job event (delivery delay)"
ALL_NAMES = (
    NAME_UPLOAD,
    NAME_STATUS,
    NAME_LIST,
    NAME_RESULT,
    NAME_ISOLATION,
    NAME_WS_CONNECT,
    NAME_WS_EVENT,
)

# REST task weights (--mix): mostly status polls, as clients waiting for their jobs do.
DEFAULT_MIX = {"status": 20, "result": 3, "list": 2, "upload": 1, "isolation": 1}
STATUS_P99_TARGET_MS = 50.0
# Budgets of the role `user` while the test runs: far above what the clients send, so a 429
# means a bug, not the test's own volume (docs/security.md, "Rate limits").
RAISED_BUCKET = '{"burst": 100000, "per_second": 100000}'
BUDGETS = ("UPLOADS", "READS", "WS_CONNECT", "WS_MESSAGES")


METRICS_TOKEN = os.urandom(16).hex()
# ``--loop-debug-ms``: a sitecustomize.py on the server's PYTHONPATH (benchmark only) that times
# every callback the event loop runs (asyncio's Handle._run; the server then runs asyncio's own
# loop instead of uvloop, whose callbacks cannot be timed) and logs those holding the loop
# longer than the threshold, with the loop thread's CPU time in them: a long callback with
# little CPU was the thread waiting (for a core, or for the GIL held by a worker thread), not
# work that a to_thread would move off the loop.
LOOP_DEBUG_HOOK = """\
import asyncio.events, sys, time

sys.modules["uvloop"] = None
_run = asyncio.events.Handle._run
_limit = {ms} / 1000


def _what(handle):
    task = getattr(handle._callback, "__self__", None)
    coro = task.get_coro() if isinstance(task, asyncio.Task) else None
    frame = getattr(coro, "cr_frame", None)
    if frame is not None:
        return f"{{coro.__qualname__}} at {{frame.f_code.co_filename}}:{{frame.f_lineno}}", frame
    if coro is not None:
        return getattr(coro, "__qualname__", repr(coro)), None
    return getattr(handle._callback, "__qualname__", repr(handle._callback)), None


def _scope(frame):
    owner = frame.f_locals.get("self") if frame is not None else None
    scope = getattr(owner, "scope", None)
    return f" [{{scope.get('method', 'WS')}} {{scope['path']}}]" if scope else ""


def _timed(self):
    wall, cpu = time.perf_counter(), time.thread_time()
    what, frame = _what(self)  # before: a task that finishes in this step has no frame after
    _run(self)
    wall = time.perf_counter() - wall
    if wall > _limit:
        cpu = time.thread_time() - cpu
        print(f"LOOPDEBUG Executing {{what}}{{_scope(frame)}} took {{wall:.3f}} s "
              f"cpu {{cpu:.3f}} s",
              file=sys.stderr, flush=True)


asyncio.events.Handle._run = _timed
"""


class SetupError(Exception):
    """The server, the accounts or the seed jobs could not be made ready."""


# ----------------------------------------------------------------------------- set-up


def short_wav(folder: Path) -> Path:
    if SPEECH.is_file():
        print(f"upload WAV: {SPEECH.resolve()} (3 s speech)")
        return SPEECH
    target = write_tone(folder / "tone-3s.wav", 3)
    print(f"upload WAV: synthesised 3 s tone (shared sample not found at {SPEECH})")
    return target


def server_env(data_dir: Path, args: argparse.Namespace) -> dict[str, str]:
    env = dict(os.environ, CALLANNOTATE_DATA_DIR=str(data_dir), CALLANNOTATE_LOG__LEVEL="WARNING")
    env.pop("CALLANNOTATE_AUTH__ENABLED", None)  # authentication on, as by default
    if args.rate_limits == "off":
        env["CALLANNOTATE_RATE_LIMITS__ENABLED"] = "false"
    elif args.rate_limits == "raised":
        env["CALLANNOTATE_RATE_LIMITS__ENABLED"] = "true"
        for budget in BUDGETS:
            env[f"CALLANNOTATE_RATE_LIMITS__ROLES__USER__{budget}"] = RAISED_BUCKET
    env["CALLANNOTATE_METRICS__TOKEN"] = METRICS_TOKEN  # server-side durations, see scrape()
    if args.loop_debug_ms > 0:
        hook = data_dir.parent / "loop-debug"
        hook.mkdir(parents=True, exist_ok=True)
        (hook / "sitecustomize.py").write_text(LOOP_DEBUG_HOOK.format(ms=args.loop_debug_ms))
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(hook), env.get("PYTHONPATH")]))
    if args.worker_process:  # and with --processes > 1, which needs it
        env["CALLANNOTATE_EVENTS__BACKEND"] = "redis"
        env["CALLANNOTATE_EVENTS__REDIS_PREFIX"] = f"load-{os.getpid()}"
    return env


def create_accounts(env: dict[str, str], count: int) -> list[dict[str, Any]]:
    """``count`` users of role ``user``, each with one API key, made with the CLI."""
    accounts: list[dict[str, Any]] = []
    for i in range(count):
        name = f"load{i}"
        password = f"load test password {i} {os.urandom(6).hex()}"
        run_cli(
            env, ["users", "create", name, "--role", "user", "--password-stdin"], password + "\n"
        )
        out = run_cli(env, ["apikeys", "create", "--user", name, "--name", "load test"])
        key = out.strip().splitlines()[-1].strip()
        accounts.append({"name": name, "key": key, "completed": []})
    return accounts


def run_cli(env: dict[str, str], argv: list[str], stdin: str = "") -> str:
    done = subprocess.run(
        callannotate_command() + argv,
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
    )
    if done.returncode != 0:
        raise SetupError(f"callannotate {' '.join(argv[:2])} failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Service:
    """The processes this script started: stopped by pid (and their process group)."""

    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    #: The server's children are API processes too (``serve --processes N --no-workers``).
    api_tree: bool = False

    def start(self, argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
        with log.open("wb") as out:
            process = subprocess.Popen(
                callannotate_command() + argv,
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.processes.append(process)
        self.logs.append(log)
        return process

    def cpu_s(self) -> tuple[float, float]:
        """CPU seconds used so far: (the API process(es), every worker process)."""
        api = workers = 0.0
        for process in self.processes:
            with contextlib.suppress(psutil.Error):
                proc = psutil.Process(process.pid)
                server = process is self.processes[0]
                for p in [proc, *proc.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        times = p.cpu_times()
                        if server and (self.api_tree or p.pid == process.pid):
                            api += times.user + times.system
                        else:
                            workers += times.user + times.system
        return api, workers

    def check_alive(self) -> None:
        for process, log in zip(self.processes, self.logs, strict=True):
            if process.poll() is not None:
                tail = log.read_text(errors="replace").splitlines()[-15:]
                raise SetupError(
                    f"pid {process.pid} exited with {process.returncode}:\n" + "\n".join(tail)
                )

    def stop(self) -> None:
        for process in reversed(self.processes):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in reversed(self.processes):
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGKILL)  # its group: the worker children
                process.wait(10)
            print(f"stopped pid {process.pid} (exit {process.returncode})")


@contextlib.contextmanager
def service(
    data_dir: Path, env: dict[str, str], args: argparse.Namespace
) -> Iterator[tuple[str, Service]]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    serve = ["serve", "--host", "127.0.0.1", "--port", str(port)]
    serve += ["--no-workers"] if args.worker_process else ["--workers", str(args.workers)]
    if args.processes > 1:
        serve += ["--processes", str(args.processes)]
    if not args.access_log:
        serve.append("--no-access-log")
    procs = Service(api_tree=args.processes > 1)
    try:
        server = procs.start(serve, env, data_dir.parent / "serve.log")
        print(f"server: pid {server.pid}, callannotate {' '.join(serve)}")
        if args.worker_process:
            worker = procs.start(
                ["worker", "--workers", str(args.workers)], env, data_dir.parent / "worker.log"
            )
            print(f"worker: pid {worker.pid}, callannotate worker --workers {args.workers}")
        wait_ready(url, procs)
        yield url, procs
    finally:
        procs.stop()


def wait_ready(url: str, procs: Service) -> None:
    """``/ready``: the embedded worker has loaded its models (or there is none)."""
    deadline = time.monotonic() + 180
    path = "/ready"
    while time.monotonic() < deadline:
        procs.check_alive()
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + path, timeout=2).status_code == 200:
                return
        time.sleep(0.3)
    raise SetupError(f"{url}{path} did not answer 200 within 180 s")


def seed_completed(
    url: str, accounts: list[dict[str, Any]], wav: Path, per_account: int, steps: str
) -> float:
    """Upload ``per_account`` jobs per account and wait until all are completed; seconds."""
    started = time.monotonic()
    pending: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=url, timeout=60) as client:
        for account in accounts:
            headers = {"Authorization": f"Bearer {account['key']}"}
            for _ in range(per_account):
                r = client.post(
                    "/jobs",
                    files={"file": (wav.name, wav.read_bytes(), "audio/wav")},
                    data={"steps": steps},
                    headers=headers,
                )
                if r.status_code != 202:
                    raise SetupError(f"seed upload: HTTP {r.status_code} {r.text[:300]}")
                pending[r.json()["id"]] = account
        deadline = time.monotonic() + 600
        while pending and time.monotonic() < deadline:
            for job_id, account in list(pending.items()):
                headers = {"Authorization": f"Bearer {account['key']}"}
                job = client.get(f"/jobs/{job_id}", headers=headers).json()
                if job["state"] == "completed":
                    account["completed"].append(job_id)
                    del pending[job_id]
                elif job["state"] in ("failed", "cancelled"):
                    raise SetupError(f"seed job {job_id} {job['state']}: {job.get('error')}")
            time.sleep(0.5)
    if pending:
        raise SetupError(f"{len(pending)} seed job(s) not completed within 600 s")
    return time.monotonic() - started


# ----------------------------------------------------------------------------- locust


def run_locust(
    url: str, plan: Path, folder: Path, args: argparse.Namespace
) -> tuple[dict[str, Any], float]:
    """Run locust in a child process (it monkey-patches with gevent): (figures, its CPU s).

    Its console output goes to ``locust.log``; warnings from it (such as its own CPU being
    saturated, which makes the figures the client's, not the server's) are printed."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(LOCUSTFILE),
        "--headless",
        "--host",
        url,
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.run_time,
        "--only-summary",
        "--loglevel",
        "WARNING",
        "--exit-code-on-error",
        "1",
    ]
    stats = folder / "stats.json"
    env = dict(os.environ, CALLANNOTATE_LOAD_PLAN=str(plan), CALLANNOTATE_LOAD_STATS=str(stats))
    log = folder / "locust.log"
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    timeout = parse_seconds(args.run_time) + 120
    with log.open("wb") as out:
        subprocess.run(
            command, env=env, cwd=REPO, timeout=timeout, stdout=out, stderr=subprocess.STDOUT
        )
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = log.read_text(errors="replace").splitlines()
    for line in lines:
        if "WARNING" in line or "ERROR" in line or "Traceback" in line:
            print(f"locust: {line.strip()[:300]}")
    if not stats.is_file():
        raise SetupError("locust wrote no figures:\n" + "\n".join(lines[-20:]))
    figures: dict[str, Any] = json.loads(stats.read_text())
    return figures, cpu


Histograms = dict[tuple[str, str], dict[float, float]]


def scrape(url: str) -> Histograms:
    """The server's ``http_request_duration_seconds`` buckets: {(route, method): {le: count}}."""
    try:
        text = httpx.get(
            url + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}, timeout=30
        ).text
    except httpx.HTTPError:
        return {}
    out: Histograms = {}
    for line in text.splitlines():
        if "_http_request_duration_seconds_bucket{" not in line:
            continue
        labels_text, _, value = line.partition("{")[2].rpartition("} ")
        labels = dict(
            (k, v.strip('"')) for k, _, v in (p.partition("=") for p in labels_text.split('",'))
        )
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        out.setdefault((labels["route"], labels["method"]), {})[le] = float(value)
    return out


def server_quantiles(
    before: Histograms, after: Histograms
) -> dict[tuple[str, str], tuple[int, list[float]]]:
    """p50/p95/p99 of the load phase per route (the difference of two scrapes), linear within
    a bucket; the top bucket's quantiles are its lower bound."""
    result: dict[tuple[str, str], tuple[int, list[float]]] = {}
    for key, buckets in after.items():
        old = before.get(key, {})
        bounds = sorted(buckets)
        counts = [buckets[b] - old.get(b, 0.0) for b in bounds]
        total = counts[-1] if counts else 0
        if total < 20:
            continue
        quantiles = []
        for q in (0.5, 0.95, 0.99):
            rank = q * total
            low, below = 0.0, 0.0
            for bound, cumulative in zip(bounds, counts, strict=True):
                if cumulative >= rank:
                    if bound == float("inf"):
                        quantiles.append(low)
                    else:
                        share = (rank - below) / max(cumulative - below, 1e-9)
                        quantiles.append(low + share * (bound - low))
                    break
                low, below = bound, cumulative
        result[key] = (int(total), quantiles)
    return result


def slow_callbacks(log: Path, threshold_ms: float) -> None:
    """Print the loop stalls the hook logged, longest first, grouped by callback (a task's
    coroutine and where it next suspended)."""
    stalls: dict[str, list[float]] = {}
    cpus: dict[str, list[float]] = {}
    for line in log.read_text(errors="replace").splitlines():
        if "LOOPDEBUG Executing" not in line or " took " not in line:
            continue
        what, _, took = line.partition("LOOPDEBUG Executing ")[2].rpartition(" took ")
        parts = took.split()  # "0.123 s cpu 0.004 s"
        seconds, cpu = float(parts[0]), float(parts[3])
        key = what.replace("/work/main/", "").strip()[:160]
        cpus.setdefault(key, []).append(cpu)
        stalls.setdefault(key, []).append(seconds)
    total = sum(len(v) for v in stalls.values())
    print(
        f"\nloop stalls > {threshold_ms:.0f} ms: {total}, "
        f"{sum(map(sum, stalls.values())):.2f} s in all, of it loop-thread CPU "
        f"{sum(map(sum, cpus.values())):.2f} s"
    )
    ranked = sorted(stalls.items(), key=lambda kv: -sum(kv[1]))
    for key, values in ranked[:15]:
        print(
            f"  {len(values):5d}x  max {max(values) * 1e3:5.0f} ms  sum "
            f"{sum(values) * 1e3:6.0f} ms  cpu {sum(cpus[key]) * 1e3:5.0f} ms  {key}"
        )


def parse_seconds(text: str) -> float:
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0.0, ""
    for ch in text.strip():
        if ch.isdigit() or ch == ".":
            number += ch
        elif ch in units and number:
            total += float(number) * units[ch]
            number = ""
        else:
            raise argparse.ArgumentTypeError(f"bad duration {text!r} (e.g. 60s, 2m, 1h30m)")
    return total + (float(number) if number else 0.0)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def report(rows: list[dict[str, Any]], failures: list[str], args: argparse.Namespace) -> None:
    print(
        f"\n{'request':42} {'count':>7} {'fail':>5} {'req/s':>7} {'p50':>6} {'p95':>6} "
        f"{'p99':>6} {'max':>6}  (ms)"
    )
    for r in rows:
        print(
            f"{r['name'][:42]:42} {r['requests']:7d} {r['failures']:5d} {r['rps']:7.1f} "
            f"{_ms(r['p50_ms']):>6} {_ms(r['p95_ms']):>6} {_ms(r['p99_ms']):>6} "
            f"{_ms(r['max_ms']):>6}"
        )
    total = next((r for r in rows if r["name"] == "Aggregated"), None)
    status = next((r for r in rows if r["name"] == NAME_STATUS), None)
    failed = total["failures"] if total else 0
    print("\ntargets:")
    print(
        f"  failures              ours {failed:>6}   target 0          "
        f"{'MET' if failed == 0 else 'MISSED'}"
    )
    if status is not None and status["p99_ms"] is not None:
        p99 = status["p99_ms"]
        verdict = "MET" if p99 < STATUS_P99_TARGET_MS else "MISSED"
        print(
            f"  {NAME_STATUS} p99      ours {p99:>6.0f} ms target < 50 ms   {verdict}"
            f"  (the target is for 200 users on 2 cores; this run: {args.users} users, "
            f"{os.cpu_count()} cpus)"
        )
    for line in failures[:20]:
        print(f"  failure: {line}")


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=200, help="simulated clients")
    parser.add_argument("--spawn-rate", type=float, default=20, help="clients started per second")
    parser.add_argument("--run-time", default="60s", help="load phase (60s, 2m, ...)")
    parser.add_argument("--accounts", type=int, default=2, help="users (role user) sharing load")
    parser.add_argument("--completed", type=int, default=2, help="completed jobs per account")
    parser.add_argument("--ws-share", type=float, default=0.2, help="share of WebSocket clients")
    parser.add_argument("--wait", default="0.2,0.6", help="REST think time min,max seconds")
    parser.add_argument(
        "--mix",
        default="",
        help="REST task weights, e.g. status=20,result=3,list=2,upload=1,isolation=1 "
        "(the default; keys left out keep it, 0 drops a task)",
    )
    parser.add_argument("--steps", default="vad", help="steps of uploaded jobs ('all': every)")
    parser.add_argument("--workers", type=int, default=1, help="worker processes")
    parser.add_argument(
        "--worker-process",
        action="store_true",
        help="serve --no-workers plus a separate `callannotate worker` (events over Redis)",
    )
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="API processes (serve --processes N); > 1 implies --worker-process, so the "
        "server's process tree is API processes only (its CPU is the API's)",
    )
    parser.add_argument(
        "--rate-limits",
        choices=("raised", "default", "off"),
        default="raised",
        help="raised (default): user budgets 100000/s for the test accounts",
    )
    parser.add_argument("--access-log", action="store_true", help="keep uvicorn's access log")
    parser.add_argument(
        "--loop-debug-ms",
        type=float,
        default=0,
        help="> 0: time every event-loop callback of the server (asyncio loop instead of "
        "uvloop) and list those that held the loop longer than this many ms, with their CPU "
        "(finds stalls; the timing slows the server, so do not compare its latencies)",
    )
    parser.add_argument("--allow-failures", action="store_true", help="exit 0 despite failures")
    parser.add_argument("--json-out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    try:
        low, high = (float(x) for x in args.wait.split(","))
    except ValueError:
        parser.error(f"--wait takes min,max seconds, got {args.wait!r}")
    if not 0 <= low <= high:
        parser.error("--wait: need 0 <= min <= max")
    args.wait_s = [low, high]
    args.mix_weights = dict(DEFAULT_MIX)
    for item in filter(None, (part.strip() for part in args.mix.split(","))):
        key, _, value = item.partition("=")
        if key not in DEFAULT_MIX or not value.isdigit():
            parser.error(
                f"--mix: {item!r} is not NAME=WEIGHT with NAME in {', '.join(DEFAULT_MIX)}"
            )
        args.mix_weights[key] = int(value)
    if not any(args.mix_weights.values()):
        parser.error("--mix: at least one weight must be above 0")
    if not 0 <= args.ws_share < 1:
        parser.error("--ws-share must be in [0, 1)")
    if args.processes > 1:
        args.worker_process = True
    for name in ("users", "accounts", "completed", "workers", "processes"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    try:
        if parse_seconds(args.run_time) <= 0:
            parser.error("--run-time must be positive")
    except argparse.ArgumentTypeError as exc:
        parser.error(str(exc))
    if args.steps == "all":
        args.steps = "preprocess,vad,diarize,transcribe,identify,sentiment"
    return args


def plan_weights(ws_share: float) -> tuple[int, int]:
    """(api weight, ws weight) in whole numbers locust accepts, e.g. 0.2 -> (4, 1)."""
    if ws_share == 0:
        return 1, 0
    ws = round(ws_share * 100)
    divisor = np.gcd(ws, 100 - ws)
    return (100 - ws) // int(divisor), ws // int(divisor)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally that stops the server


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)
    load1 = os.getloadavg()[0]
    print(f"cpus: {os.cpu_count()}, load average at start: {load1:.2f} (shared machine)")
    limits = {
        "raised": f"on, role `user` budgets raised to {RAISED_BUCKET} for the test accounts "
        "(CALLANNOTATE_RATE_LIMITS__ROLES__USER__{UPLOADS,READS,WS_CONNECT,WS_MESSAGES})",
        "default": "on, default budgets (role `user`: 30 reads/s each; expect 429s)",
        "off": "off (CALLANNOTATE_RATE_LIMITS__ENABLED=false)",
    }[args.rate_limits]
    print(f"rate limits: {limits}")
    with tempfile.TemporaryDirectory(prefix="callannotate-load-") as tmp:
        folder = Path(tmp)
        wav = short_wav(folder)
        data_dir = folder / "data"
        env = server_env(data_dir, args)
        try:
            accounts = create_accounts(env, args.accounts)
            print(f"accounts: {', '.join(a['name'] for a in accounts)} (role user, API keys)")
            with service(data_dir, env, args) as (url, procs):
                seconds = seed_completed(url, accounts, wav, args.completed, args.steps)
                print(f"seeded {args.completed} completed job(s) per account in {seconds:.1f} s")
                api_w, ws_w = plan_weights(args.ws_share)
                plan = folder / "plan.json"
                plan.write_text(
                    json.dumps(
                        {
                            "wav": str(wav),
                            "steps": args.steps,
                            "wait_s": args.wait_s,
                            "ws_session_s": [5, 15],
                            "api_weight": api_w,
                            "ws_weight": ws_w,
                            "mix": args.mix_weights,
                            "accounts": accounts,
                        }
                    )
                )
                print(
                    f"locust: {args.users} users ({args.ws_share:.0%} WebSocket), spawn rate "
                    f"{args.spawn_rate}/s, run time {args.run_time}, REST think time "
                    f"{args.wait_s[0]}-{args.wait_s[1]} s, uploads ask for steps={args.steps}, "
                    f"REST mix {','.join(f'{k}={v}' for k, v in args.mix_weights.items())}"
                )
                api_before, workers_before = procs.cpu_s()
                server_before = scrape(url)
                figures, locust_cpu = run_locust(url, plan, folder, args)
                server_after = scrape(url)
                api_after, workers_after = procs.cpu_s()
                api_cpu, workers_cpu = api_after - api_before, workers_after - workers_before
                procs.check_alive()
            if args.loop_debug_ms > 0:
                slow_callbacks(data_dir.parent / "serve.log", args.loop_debug_ms)
        except (SetupError, subprocess.TimeoutExpired) as exc:
            print(f"load test set-up failed: {exc}", file=sys.stderr)
            return 2
    rows, failures = figures["rows"], figures["failures"]
    report(rows, failures, args)
    server_side = server_quantiles(server_before, server_after)
    if server_side:
        print(
            "\nserver-side (its own histogram, request start to last body byte; excludes time "
            "queued before the loop reads the request), estimated within buckets:"
        )
        for (route, method), (count, q) in sorted(server_side.items()):
            print(
                f"  {method} {route:28} {count:7d}  p50 {q[0] * 1e3:6.0f}  p95 "
                f"{q[1] * 1e3:6.0f}  p99 {q[2] * 1e3:6.0f} ms"
            )
    seen = {r["name"] for r in rows if r["requests"] > 0}
    missing = [name for name in ALL_NAMES if name not in seen]
    if missing:
        print(f"  not exercised in this run: {', '.join(missing)}")
    run_s = parse_seconds(args.run_time)
    total = next((r for r in rows if r["name"] == "Aggregated"), None)
    http = (total["requests"] if total else 0) - sum(
        r["requests"] for r in rows if r["name"] == NAME_WS_EVENT
    )
    print(
        f"\nCPU during the load phase ({run_s:.0f} s): API process {api_cpu:.1f} s "
        f"({api_cpu / run_s:.2f} cores, {1e6 * api_cpu / max(1, http):.0f} µs per request), "
        f"workers {workers_cpu:.1f} s ({workers_cpu / run_s:.2f} cores), locust "
        f"{locust_cpu:.1f} s ({locust_cpu / run_s:.2f} cores); load average at end "
        f"{os.getloadavg()[0]:.2f} (other processes share the machine)"
    )
    if args.json_out:
        args.json_out.write_text(
            json.dumps(
                {
                    "users": args.users,
                    "run_time_s": run_s,
                    "rate_limits": args.rate_limits,
                    "rows": rows,
                    "failures": failures,
                    "not_exercised": missing,
                    "api_cpu_s": api_cpu,
                    "workers_cpu_s": workers_cpu,
                    "locust_cpu_s": locust_cpu,
                },
                indent=2,
            )
        )
    failed = sum(r["failures"] for r in rows if r["name"] != "Aggregated")
    if failed and not args.allow_failures:
        print(f"{failed} request(s) failed: exit 1")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
