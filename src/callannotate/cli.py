"""The ``callannotate`` command line.

Subcommands are registered from :data:`COMMAND_MODULES`: each module exposes
``add_parser(subparsers)`` which adds its subparser and sets ``func`` (a callable taking the
parsed ``argparse.Namespace`` and returning an exit code) with ``set_defaults(func=...)``.
Adding a command group (``voices ...``) is one line in that tuple.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import signal
import stat
import sys
import tempfile
import threading
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TextIO

from pydantic import ValidationError
from pydantic_settings import SettingsError

from callannotate import __version__
from callannotate.config import Settings, log_level_name
from callannotate.security.masterkeys import MasterKeyError

# Extra command groups: modules exposing ``add_parser(subparsers)`` (one line each).
COMMAND_MODULES: tuple[str, ...] = (
    "callannotate.voices.cli",
    "callannotate.contacts.cli",
    "callannotate.pipeline.settings_cli",
    "callannotate.db.cli",
    "callannotate.security.cli",
    "callannotate.security.audit_cli",
    "callannotate.security.keys_cli",
    "callannotate.observability.cli",
    "callannotate.jobs.status_cli",
    "callannotate.pipeline.models_cli",
)

DEFAULT_URL = "http://127.0.0.1:8000"
URL_HELP = "server URL (default: CALLANNOTATE_URL, else http://api.host:api.port)"
BUILTIN_FORMATS = ("json",)


class CliError(Exception):
    """A user-facing error: printed without a traceback, exit code 2."""


def int_in_range(low: int, high: int) -> Callable[[str], int]:
    """An argparse ``type``: a whole number from ``low`` to ``high``, else a usage error (a
    ``--limit`` of 0, -1 or 10**20 reached the database as no limit, all rows or an
    OverflowError)."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a whole number: {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be {low} to {high}, not {number}")
        return number

    return parse


def positive_seconds(value: str) -> float:
    """An argparse ``type``: a duration in seconds above 0, else a usage error (``--timeout
    -1`` reached the socket as ``ValueError: Timeout value out of range``, a traceback)."""
    try:
        seconds = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < seconds < float("inf"):
        raise argparse.ArgumentTypeError(f"must be above 0 seconds, not {value}")
    return seconds


def log_level(value: str) -> str:
    """An argparse ``type``: a logging level name (``debug``, ``INFO``, ...), upper-cased
    (``--log-level nonsense`` was a ``ValueError`` traceback from the logging module)."""
    try:
        return log_level_name(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


# C0 and C1 controls (ESC starts terminal escape sequences; CR rewrites the line) and the
# bidirectional overrides and isolates (they reorder what follows on screen).
_UNPRINTABLE = {
    code: f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"
    for code in [*range(0x20), *range(0x7F, 0xA0), *range(0x202A, 0x202F), *range(0x2066, 0x206A)]
}


def printable(text: str) -> str:
    """``text`` safe to print on a terminal: control characters and bidirectional overrides
    shown as escapes (``\\x1b``, ``\\u202e``). For text from elsewhere (a CardDAV server's
    contact names), which must not move the cursor, recolour or rewrite what is printed."""
    return text.translate(_UNPRINTABLE)


def display_path(path: Path | str) -> str:
    """``path`` as one printable line: bytes of a name that are not UTF-8 as ``\\xff``
    (printing the raw surrogate raised ``UnicodeEncodeError``), and a newline or an escape
    in a name as ``\\x0a`` / ``\\x1b`` (a name did not end the line nor recolour the
    terminal)."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return printable(text)


def os_error_text(exc: OSError) -> str:
    """An ``OSError`` as one line: ``File exists: /cache`` (no traceback)."""
    if exc.strerror and exc.filename is not None:
        return f"{exc.strerror}: {display_path(exc.filename)}"
    return printable(str(exc.strerror or exc))


def recording_name(path: Path) -> str:
    """The file name recorded in the annotation: valid UTF-8 (a name with other bytes made
    the whole run fail at the end with ``PydanticSerializationError``: surrogates)."""
    return os.fsencode(path.name).decode("utf-8", "replace")


def settings_error(exc: ValidationError) -> CliError:
    """One line per invalid setting, named as its environment variable."""
    problems = []
    for err in exc.errors():
        path = "__".join(str(part) for part in err["loc"]).upper()
        message = err["msg"].removeprefix("Value error, ")  # pydantic's, not ours
        problems.append(f"CALLANNOTATE_{path}: {message}")
    return CliError("invalid settings: " + "; ".join(problems))


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment with the given top-level/nested overrides applied."""
    try:
        settings = Settings()
        if not overrides:
            return settings
        data = settings.model_dump()
        for key, value in overrides.items():
            if value is None:
                continue
            section, _, field = key.partition("__")
            if field:
                data[section][field] = value
            else:
                data[key] = value
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise settings_error(exc) from None


# --------------------------------------------------------------------------- serve / worker


def _cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from callannotate.api.app import create_app
    from callannotate.api.processes import processes_refusal, run_processes
    from callannotate.api.protocol import HTTP_PROTOCOL
    from callannotate.api.routes.stream import WS_MAX_FRAME_BYTES, WS_MAX_QUEUE
    from callannotate.api.tls import TlsConfigError, uvicorn_tls_options
    from callannotate.observability.logging import configure_logging
    from callannotate.security.startup import FIRST_ADMIN_HINT, bind_refusal, prepare_store

    settings = load_settings(
        api__host=args.host,
        api__port=args.port,
        workers__concurrency=args.workers,
        api__embedded_workers=False if args.no_workers else None,
        api__processes=args.processes,
        api__ssl_certfile=args.ssl_certfile,
        api__ssl_keyfile=args.ssl_keyfile,
    )
    try:
        tls = uvicorn_tls_options(settings.api)  # checked before anything starts
    except TlsConfigError as exc:
        raise CliError(exc.detail) from exc
    refusal = bind_refusal(settings) or processes_refusal(settings)  # auth off: loopback only
    if refusal is not None:
        raise CliError(refusal)
    from callannotate.events.preflight import redis_refusal

    refusal = redis_refusal(settings)  # the event bus's Redis answers (once running: optional)
    if refusal is not None:
        raise CliError(refusal)
    configure_logging(settings.log)
    has_users = prepare_store(settings)  # migrations run on start
    if settings.auth.enabled and not has_users:
        print(f"callannotate: {FIRST_ADMIN_HINT}", file=sys.stderr)
    options: dict[str, Any] = dict(
        host=settings.api.host,
        port=settings.api.port,
        log_config=None,
        access_log=not args.no_access_log,
        timeout_graceful_shutdown=int(args.grace),
        ws_per_message_deflate=settings.api.ws_compression,
        # one WebSocket message, and how many uvicorn queues per connection (issue 15.8)
        ws_max_size=WS_MAX_FRAME_BYTES,
        ws_max_queue=WS_MAX_QUEUE,
        http=HTTP_PROTOCOL,  # uvicorn's own 400s carry the JSON error body too
        **tls,
    )
    if settings.api.processes > 1:
        run_processes(settings, partial(create_app, freeze_gc=True), options, args.grace)
    else:
        uvicorn.run(create_app(settings, freeze_gc=True), **options)
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    from callannotate.jobs.service import run_standalone_worker
    from callannotate.observability.logging import configure_logging
    from callannotate.security.startup import prepare_store

    concurrency = args.concurrency or args.workers
    settings = load_settings(
        workers__concurrency=concurrency,
        jobs__executor=args.executor,
        metrics__port=args.metrics_port,
    )
    configure_logging(settings.log)
    prepare_store(settings)  # migrations run on start (the store is shared with the API)
    if settings.jobs.executor == "celery":  # docs/scale-out.md
        from callannotate.jobs.executors.celery import run_celery_worker

        queues = [q.strip() for q in (args.queues or "").split(",") if q.strip()] or None
        return run_celery_worker(settings, queues=queues)
    run_standalone_worker(settings)
    return 0


# --------------------------------------------------------------------------- annotate


def available_formats() -> tuple[tuple[str, ...], str | None]:
    """Export formats usable now, and why others are not (``None`` when exporters load)."""
    try:
        exporters = importlib.import_module("callannotate.reports.exporters")
    except ImportError as exc:
        return BUILTIN_FORMATS, f"callannotate.reports.exporters is not available ({exc})"
    names = getattr(exporters, "FORMATS", None)
    if names is None:
        return (*BUILTIN_FORMATS, "rttm", "srt", "vtt", "csv", "html", "pdf"), None
    return tuple(dict.fromkeys((*BUILTIN_FORMATS, *(str(n) for n in names)))), None


def format_extension(fmt: str) -> str:
    """File extension of ``fmt``: the exporter's own (``csv`` -> ``utterances.csv``) or ``fmt``."""
    if fmt in BUILTIN_FORMATS:
        return fmt
    exporters = importlib.import_module("callannotate.reports.exporters")
    spec = getattr(exporters, "FORMATS", {}).get(fmt)
    return str(getattr(spec, "extension", fmt) or fmt)


def output_name(stem: str, fmt: str) -> str:
    """The file ``annotate`` writes for ``fmt``: ``<stem>.<extension>`` (``x.utterances.csv``)."""
    return f"{stem}.{format_extension(fmt)}"


def _format_help() -> str:
    """``--format`` help naming the file each usable format writes (the one place it is said)."""
    usable, why = available_formats()
    files = ", ".join(f"{fmt}={output_name('<stem>', fmt)}" for fmt in usable)
    missing = f"; other formats need the exporters: {why}" if why else ""
    return f"comma-separated formats (default json,rttm), each written to DIR/: {files}{missing}"


def export_annotation(annotation: Any, fmt: str) -> bytes:
    """Bytes of ``annotation`` in ``fmt`` (JSON built in, others via the reports exporters)."""
    if fmt == "json":
        text: str = annotation.model_dump_json(indent=2)
        return text.encode("utf-8") + b"\n"
    exporters = importlib.import_module("callannotate.reports.exporters")
    data: bytes = exporters.export(annotation, fmt)
    return data


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _write_atomic(path: Path, data: bytes) -> None:
    """Write via a temp file and rename, so readers never see half a file. The temp name is
    short (``.<first 32 characters>.<random>.tmp``): ``.<name>.<random>.tmp`` went past the
    file system's 255 bytes for a long name whose report name itself fits."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:32]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; use the usual mode
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class TqdmHook:
    """A progress hook drawing one tqdm bar per file; the bar shows the current step."""

    def __init__(self, label: str, *, enabled: bool = True, stream: TextIO | None = None) -> None:
        from tqdm import tqdm

        self.label = label
        self.step: str | None = None
        self.bar = tqdm(
            total=1,
            desc=label,
            unit="step",
            disable=not enabled,
            file=stream or sys.stderr,
            leave=True,
            dynamic_ncols=True,
            bar_format="{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}]",
        )

    def __call__(self, step: str, *, completed: int, total: int) -> None:
        if step != self.step:
            self.step = step
            self.bar.reset(total=max(total, 1))
            self.bar.set_description_str(f"{self.label} {step}", refresh=False)
        if total > 0 and self.bar.total != total:
            self.bar.total = total
        self.bar.n = min(completed, max(total, 1))
        self.bar.refresh()

    def close(self, status: str = "done") -> None:
        self.bar.set_description_str(f"{self.label} {status}", refresh=False)
        self.bar.close()


def _annotate_options(args: argparse.Namespace) -> Any:
    from pydantic import ValidationError

    from callannotate.pipeline.types import REQUEST_CONTEXT, AnnotateOptions, validation_detail

    raw: dict[str, Any] = {"language": args.language}
    if args.speakers is not None:
        raw["num_speakers"] = args.speakers
    if args.min_speakers is not None:
        raw["min_speakers"] = args.min_speakers
    if args.max_speakers is not None:
        raw["max_speakers"] = args.max_speakers
    if args.steps:
        raw["steps"] = [s.strip() for s in args.steps.split(",") if s.strip()]
    if args.channel_mode:
        raw["channel_mode"] = args.channel_mode
    if args.initial_prompt:
        raw["initial_prompt"] = args.initial_prompt
    try:
        return AnnotateOptions.model_validate(raw, context=REQUEST_CONTEXT)
    except ValidationError as exc:
        raise CliError(f"invalid options: {validation_detail(exc)}") from exc


def _input_problem(path: Path) -> str | None:
    """Why ``path`` cannot be annotated (``None``: a regular file, or a link to one)."""
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        return "no such file"
    except OSError as exc:
        return str(exc.strerror or exc)
    if stat.S_ISDIR(mode):
        return "a folder, not a file"
    if not stat.S_ISREG(mode):  # a FIFO, a device, a socket: ffmpeg probes then reads again
        return "not a regular file"
    return None


def _parse_formats(value: str) -> list[str]:
    """``--format`` values: comma- (or space-) separated, any case, each once."""
    formats = [f.lower() for f in re.split(r"[,\s]+", value) if f]
    return list(dict.fromkeys(formats))


def _name_max(folder: Path) -> int:
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):
        return 255


def _terminate(signum: int, frame: Any) -> None:
    """SIGTERM during ``annotate``: unwind like Ctrl-C, so a report being written leaves no
    temp file behind (the default action ended the process on the spot)."""
    raise SystemExit(128 + signum)


def _cmd_annotate(args: argparse.Namespace) -> int:
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if on_main_thread else None
    try:
        return _annotate_files(args)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _annotate_files(args: argparse.Namespace) -> int:
    from callannotate.errors import CallAnnotateError, ConfigError
    from callannotate.observability.logging import configure_logging
    from callannotate.pipeline.run import annotate
    from callannotate.pipeline.settings import load_models_settings

    formats = _parse_formats(args.format)
    if not formats:
        raise CliError("--format needs at least one format")
    usable, why = available_formats()
    unknown = [f for f in formats if f not in usable]
    if unknown:
        reason = f" ({why})" if why else ""
        raise CliError(
            f"format(s) {', '.join(unknown)} not available{reason}; available: {', '.join(usable)}"
        )
    options = _annotate_options(args)
    files: list[Path] = []
    seen: set[str] = set()
    for f in map(Path, args.files):  # one file named twice (`*.wav a.wav`) is annotated once
        if (real := os.path.realpath(f)) not in seen:
            seen.add(real)
            files.append(f)
    problems = [(f, _input_problem(f)) for f in files]
    bad = [f"{display_path(f)}: {why}" for f, why in problems if why]
    if bad:
        raise CliError("; ".join(bad))
    stems: dict[str, Path] = {}
    for f in files:
        if f.stem in stems:
            raise CliError(
                f"{display_path(stems[f.stem])} and {display_path(f)} would both write "
                f"{display_path(f.stem)}.*; rename one"
            )
        stems[f.stem] = f
    if args.out == "-":  # not stdout: a folder named `-` appeared instead
        raise CliError("--out - (stdout) is not supported: reports are files in a folder")
    settings = load_settings()  # an invalid setting stops the run before anything is made
    try:  # once, not the same error again for every file after it
        load_models_settings(settings.models_config)
    except ConfigError as exc:
        raise CliError(exc.detail) from exc
    out = Path(args.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file of that name, no permission, read-only file system
        raise CliError(
            f"cannot create the output folder {display_path(out)}: {exc.strerror or exc}"
        ) from exc
    try:  # checked now, not after minutes of model loading and annotating
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:  # no permission, a read-only file system, a /proc folder
        raise CliError(
            f"cannot write to the output folder {display_path(out)}: {exc.strerror or exc}"
        ) from exc
    name_max = _name_max(out)
    for f in files:
        for fmt in formats:
            name = output_name(f.stem, fmt)
            if len(os.fsencode(name)) > name_max:
                raise CliError(
                    f"output file name too long ({len(os.fsencode(name))} bytes, at most "
                    f"{name_max}): {display_path(name)}; rename {display_path(f)}"
                )
            if os.path.realpath(out / name) in seen:  # `annotate rec/x.json --out rec`
                raise CliError(
                    f"the {fmt} report of {display_path(f)} would replace the input "
                    f"{display_path(out / name)}; choose another --out"
                )

    configure_logging(settings.log.model_copy(update={"level": args.log_level}))
    show_progress = (not args.quiet and sys.stderr.isatty()) or args.progress
    failures = 0
    for path in files:
        shown = display_path(path)
        hook = TqdmHook(display_path(path.name), enabled=show_progress)
        try:
            annotation = annotate(
                path, options, settings=settings, hook=hook, filename=recording_name(path)
            )
            written = []
            for fmt in formats:
                target = out / output_name(path.stem, fmt)
                data = export_annotation(annotation, fmt)
                try:
                    _write_atomic(target, data)
                except OSError as exc:  # a full disk, a folder removed meanwhile
                    raise _WriteFailed(
                        f"cannot write {display_path(target)}: {exc.strerror or exc}"
                    ) from exc
                written.append(display_path(target))
        except CallAnnotateError as exc:
            hook.close("failed")
            failures += 1
            print(f"{shown}: {exc.code}: {printable(exc.detail)}", file=sys.stderr)
            continue
        except Exception as exc:  # keep going with the other files, but say what broke
            hook.close("failed")
            failures += 1
            what = str(exc) if isinstance(exc, _WriteFailed) else f"{type(exc).__name__}: {exc}"
            print(f"{shown}: {printable(what)}", file=sys.stderr)
            continue
        hook.close()
        if not args.quiet:
            print("\n".join(written))
    return 1 if failures else 0


class _WriteFailed(Exception):
    """A report could not be written (the message names the file and the reason)."""


# --------------------------------------------------------------------------- jobs (HTTP)


def _client(url: str, timeout: float) -> Any:
    import httpx

    return httpx.Client(base_url=url.rstrip("/"), timeout=timeout)


def server_url(url: str | None) -> str:
    """``--url``, else ``CALLANNOTATE_URL``, else the server the settings describe
    (``api.host``:``api.port``), as ``callannotate healthcheck`` picks it."""
    if url:
        return url
    if os.environ.get("CALLANNOTATE_URL"):
        return os.environ["CALLANNOTATE_URL"]
    from callannotate.observability.cli import _default_url

    return _default_url(load_settings())


def _request(args: argparse.Namespace, method: str, path: str, **kwargs: Any) -> Any:
    import httpx

    url = args.url = server_url(args.url)
    token = getattr(args, "token", None)
    if token:
        kwargs.setdefault("headers", {})["Authorization"] = f"Bearer {token}"
    try:
        with _client(url, args.timeout) as client:
            response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise CliError(f"cannot reach {url}: {exc}") from exc
    except httpx.InvalidURL as exc:  # not an HTTPError
        raise CliError(f"invalid --url {url!r}: {exc}") from exc
    if response.status_code >= 400:
        try:
            body = response.json()
            message = f"{body.get('error')}: {body.get('detail')}"
        except ValueError:
            message = response.text[:200]
        raise CliError(f"{method} {path} -> {response.status_code} {message}")
    return response


def _progress_text(job: dict[str, Any]) -> str:
    running = [p for p in job.get("progress", []) if p.get("status") == "running"]
    if running:
        p = running[-1]
        return f"{p['step']} {p.get('percent', 0):.0f}%"
    return job.get("error") or ""


def _cmd_jobs_list(args: argparse.Namespace) -> int:
    params: dict[str, Any] = {"offset": args.offset, "limit": args.limit}
    if args.status:
        params["status"] = args.status
    page = _request(args, "GET", "/jobs", params=params).json()
    if args.json:
        print(json.dumps(page, indent=2))
        return 0
    print(f"{'ID':32}  {'STATE':9}  {'CREATED':19}  {'DURATION':>8}  FILE  PROGRESS")
    for job in page["items"]:
        created = str(job["created_at"])[:19].replace("T", " ")
        duration = f"{job['audio']['duration']:.1f}s"
        print(
            f"{job['id']:32}  {job['state']:9}  {created:19}  {duration:>8}  "
            f"{job['audio']['filename']}  {_progress_text(job)}".rstrip()
        )
    shown = len(page["items"])
    print(f"{shown} of {page['total']} job(s) (offset {page['offset']})")
    return 0


def _cmd_jobs_show(args: argparse.Namespace) -> int:
    job = _request(args, "GET", f"/jobs/{args.job_id}").json()
    print(json.dumps(job, indent=2))
    return 0


def _cmd_jobs_cancel(args: argparse.Namespace) -> int:
    _request(args, "DELETE", f"/jobs/{args.job_id}")
    print(f"job {args.job_id} cancelled and deleted")
    return 0


# --------------------------------------------------------------------------- parser


def add_parser(subparsers: Any) -> None:
    """Register the built-in commands: serve, worker, annotate, jobs."""
    serve = subparsers.add_parser("serve", help="run the HTTP API (and embedded workers)")
    serve.add_argument("--host", help="bind address (CALLANNOTATE_API__HOST)")
    serve.add_argument("--port", type=int, help="port (CALLANNOTATE_API__PORT)")
    serve.add_argument(
        "--workers",
        type=int,
        help="embedded worker processes running jobs (CALLANNOTATE_WORKERS__CONCURRENCY)",
    )
    serve.add_argument(
        "--no-workers",
        action="store_true",
        help="API only; run `callannotate worker` separately (CALLANNOTATE_API__EMBEDDED_WORKERS)",
    )
    serve.add_argument(
        "--processes",
        type=int,
        help="HTTP server processes sharing the port; > 1 needs events.backend=redis "
        "(CALLANNOTATE_API__PROCESSES)",
    )
    serve.add_argument("--no-access-log", action="store_true", help="do not log every request")
    serve.add_argument(
        "--ssl-certfile", help="PEM certificate: serve HTTPS (CALLANNOTATE_API__SSL_CERTFILE)"
    )
    serve.add_argument(
        "--ssl-keyfile", help="PEM private key of the certificate (CALLANNOTATE_API__SSL_KEYFILE)"
    )
    serve.add_argument(
        "--grace", type=float, default=30.0, help="seconds to finish requests on shutdown"
    )
    serve.set_defaults(func=_cmd_serve)

    worker = subparsers.add_parser(
        "worker",
        help="run a standalone worker pool on the queue folder (no HTTP); its job events go "
        "to the configured event bus (use events.backend=redis next to `serve --no-workers`)",
    )
    worker.add_argument("--workers", type=int, help="worker processes (default from settings)")
    worker.add_argument(
        "--executor",
        choices=["local", "celery"],
        help="'celery': run a Celery worker on jobs.broker_url (CALLANNOTATE_JOBS__EXECUTOR)",
    )
    worker.add_argument("--concurrency", type=int, help="same as --workers")
    worker.add_argument(
        "--queues", help="Celery queues to serve, comma-separated: heavy,light (default both)"
    )
    worker.add_argument(
        "--metrics-port",
        type=int,
        help="port of this worker's metrics listener on metrics.host; with --executor celery "
        "it serves the metrics of all the worker's children (CALLANNOTATE_METRICS__PORT)",
    )
    worker.set_defaults(func=_cmd_worker)

    ann = subparsers.add_parser(
        "annotate",
        help="annotate recordings locally; one file per format in DIR (see annotate --help)",
    )
    ann.add_argument("files", nargs="+", metavar="FILE", help="recordings (any ffmpeg format)")
    ann.add_argument(
        "--out", "-o", required=True, metavar="DIR", help="output folder (made if missing)"
    )
    ann.add_argument("--format", "-f", default="json,rttm", help=_format_help())
    ann.add_argument("--language", "-l", default="auto", help="ru, en, ... or auto (default)")
    ann.add_argument("--speakers", "-n", type=int, help="exact number of speakers")
    ann.add_argument("--min-speakers", type=int)
    ann.add_argument("--max-speakers", type=int)
    from callannotate.pipeline.types import ALL_STEPS

    ann.add_argument(
        "--steps",
        help=f"comma-separated steps to run, of {','.join(ALL_STEPS)} (default: all; "
        "decode and align always run)",
    )
    ann.add_argument("--channel-mode", choices=("auto", "mix", "per-channel"))
    ann.add_argument("--initial-prompt", help="names and terms that help transcription")
    ann.add_argument("--quiet", "-q", action="store_true", help="no progress bar, no file list")
    ann.add_argument(
        "--progress", action="store_true", help="draw the progress bar even when not a TTY"
    )
    ann.add_argument(
        "--log-level", type=log_level, default="WARNING", help="log level (default WARNING)"
    )
    ann.set_defaults(func=_cmd_annotate)

    jobs = subparsers.add_parser("jobs", help="list, show or cancel jobs on a running server")
    jobs.add_argument("--url", help=URL_HELP)
    jobs.add_argument(
        "--timeout", type=positive_seconds, default=30.0, help="HTTP timeout, seconds"
    )
    jobs.add_argument(
        "--token",
        default=os.environ.get("CALLANNOTATE_TOKEN"),
        help="access token or API key sent as 'Authorization: Bearer' (CALLANNOTATE_TOKEN)",
    )
    jobs_sub = jobs.add_subparsers(dest="jobs_command", metavar="{list,show,cancel}")
    jobs_sub.required = True
    lst = jobs_sub.add_parser("list", help="list jobs, newest first")
    lst.add_argument("--status", help="filter: queued,running,completed,failed,cancelled")
    lst.add_argument("--offset", type=int, default=0)
    lst.add_argument("--limit", type=int, default=50)
    lst.add_argument("--json", action="store_true", help="print the raw JSON page")
    lst.set_defaults(func=_cmd_jobs_list)
    show = jobs_sub.add_parser("show", help="print one job as JSON")
    show.add_argument("job_id")
    show.set_defaults(func=_cmd_jobs_show)
    cancel = jobs_sub.add_parser("cancel", help="cancel (if queued/running) and delete a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(func=_cmd_jobs_cancel)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="callannotate",
        description="Annotate call recordings: who spoke when, what was said, how.",
    )
    parser.add_argument("--version", action="version", version=f"callannotate {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    add_parser(subparsers)
    for module_name in COMMAND_MODULES:
        importlib.import_module(module_name).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit where it cannot be caught
    except BrokenPipeError:  # the reader went away (`callannotate jobs | head`): stop quietly
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # the interpreter's last flush goes nowhere
        os.close(devnull)
        return 128 + signal.SIGPIPE
    except CliError as exc:
        print(f"callannotate: error: {exc}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        if exc.title != Settings.__name__:  # a bug, not the user's environment
            raise
        print(f"callannotate: error: {settings_error(exc)}", file=sys.stderr)
        return 2
    except SettingsError as exc:  # e.g. a list or dict setting that is not JSON
        print(f"callannotate: error: invalid settings: {exc}", file=sys.stderr)
        return 2
    except MasterKeyError as exc:  # a bad master key or key file stops `serve` / `worker`
        print(f"callannotate: error: {exc.detail}", file=sys.stderr)
        return 2
    except OSError as exc:  # a file or folder a command needs (`models prepare --cache-dir F`)
        print(f"callannotate: error: {os_error_text(exc)}", file=sys.stderr)
        return 1
    except Exception as exc:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from sqlalchemy.exc import OperationalError

        # a dependency that does not answer at start (a wrong URL, or it is down): what the
        # client library says, in one line, not a traceback
        if isinstance(exc, OperationalError):
            reason = str(exc.orig or exc).strip()
            print(f"callannotate: error: cannot use the database: {reason}", file=sys.stderr)
            return 2
        if isinstance(exc, RedisConnectionError):
            print(f"callannotate: error: cannot reach Redis: {exc}", file=sys.stderr)
            return 2
        raise
    except KeyboardInterrupt:
        print("callannotate: interrupted", file=sys.stderr)
        return 130
    return code


if __name__ == "__main__":
    sys.exit(main())
