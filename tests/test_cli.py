"""The ``callannotate`` CLI: annotate locally, talk to a real server, extension modules."""

from __future__ import annotations

import json
import re
import sys
import threading
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import uvicorn

from callannotate import cli
from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.pipeline.types import Annotation
from local_servers import free_port


def write_wav(path: Path, seconds: float = 1.0, rate: int = 16000, channels: int = 1) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    frames = np.repeat(tone[:, None], channels, axis=1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(frames.tobytes())
    return path


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))


# ------------------------------------------------------------------------------ annotate


def test_annotate_writes_stem_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    call = write_wav(tmp_path / "call.wav", seconds=1.5, channels=2)
    out = tmp_path / "out"
    code = cli.main(
        ["annotate", str(call), "--out", str(out), "--steps", "preprocess", "--format", "json"]
    )
    assert code == 0
    target = out / "call.json"
    assert capsys.readouterr().out.strip() == str(target)
    annotation = Annotation.model_validate_json(target.read_text())
    assert annotation.recording.filename == "call.wav"
    assert annotation.recording.channels == 2
    assert annotation.recording.duration == pytest.approx(1.5)
    assert [p.name for p in out.iterdir()] == ["call.json"]  # no temp files left


def test_annotate_several_files_and_bad_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    good = write_wav(tmp_path / "a.wav")
    bad = tmp_path / "b.wav"
    bad.write_text("not audio")
    out = tmp_path / "out"
    code = cli.main(
        ["annotate", str(good), str(bad), "--out", str(out), "--steps", "preprocess", "-q"]
    )
    assert code == 1
    assert "b.wav: invalid_audio" in capsys.readouterr().err
    # The default formats are json + rttm (the contract other tooling relies on).
    assert sorted(p.name for p in out.iterdir()) == ["a.json", "a.rttm"]


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--format", "json,bogus"], "bogus"),
        (["--speakers", "0"], "num_speakers"),
        (["--min-speakers", "3", "--max-speakers", "2"], "min_speakers"),
        (["--language", "english"], "language"),
        (["--language", "xx"], "language"),  # code-shaped but unknown to Whisper
        (["--steps", "dance"], "steps"),
    ],
)
def test_annotate_refuses_bad_arguments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str
) -> None:
    call = write_wav(tmp_path / "call.wav")
    code = cli.main(["annotate", str(call), "--out", str(tmp_path / "out"), *extra])
    assert code == 2
    err = capsys.readouterr().err
    assert message in err
    assert "Value error" not in err  # pydantic's prefix is not part of the message
    assert not (tmp_path / "out" / "call.json").exists()


def test_annotate_refuses_missing_and_duplicate_stems(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert cli.main(["annotate", str(tmp_path / "nope.wav"), "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "x").mkdir()
    a = write_wav(tmp_path / "call.wav")
    b = write_wav(tmp_path / "x" / "call.wav")
    assert cli.main(["annotate", str(a), str(b), "--out", str(tmp_path / "out")]) == 2
    assert "rename one" in capsys.readouterr().err


def test_annotate_refuses_an_output_folder_it_cannot_make(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    call = write_wav(tmp_path / "call.wav")
    (tmp_path / "taken").write_text("a file, not a folder")
    for out in (tmp_path / "taken", tmp_path / "taken" / "sub"):
        assert cli.main(["annotate", str(call), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert err.startswith("callannotate: error: cannot create the output folder"), err
        assert "Traceback" not in err


def help_output_names(capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    """``{format: file name}`` as ``annotate --help`` states it (``csv=<stem>.utterances.csv``)."""
    with pytest.raises(SystemExit):
        cli.main(["annotate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    return dict(re.findall(r"([\w.]+)=(<stem>\.[\w.]+?)(?=[,;]|\s|$)", text))


def test_annotate_writes_the_file_help_names_for_every_format(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    usable, why = cli.available_formats()
    if why is not None:
        pytest.skip(f"exporters not installed: {why}")
    promised = help_output_names(capsys)
    assert set(promised) == set(usable), "annotate --help must name the file of every format"
    call = write_wav(tmp_path / "call.wav")
    for fmt in usable:
        out = tmp_path / fmt
        code = cli.main(
            ["annotate", str(call), "--out", str(out), "-f", fmt, "--steps", "vad", "-q"]
        )
        assert code == 0, capsys.readouterr().err
        written = [p.name for p in out.iterdir()]
        assert written == [promised[fmt].replace("<stem>", "call")], fmt


def test_readme_names_the_file_of_every_format(capsys: pytest.CaptureFixture[str]) -> None:
    _, why = cli.available_formats()
    if why is not None:
        pytest.skip(f"exporters not installed: {why}")
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Command line") :].split("\n## ", 1)[0]
    missing = [name for name in help_output_names(capsys).values() if f"`{name}`" not in section]
    assert not missing, f"README's command-line section must name these files: {missing}"


def test_other_formats_need_the_exporters(tmp_path: Path) -> None:
    usable, why = cli.available_formats()
    assert "json" in usable
    if why is None:
        assert {"rttm", "srt", "vtt"} <= set(usable)
    else:
        assert usable == ("json",)
        assert "exporters" in why


# ------------------------------------------------------------------------------ parser


def test_help_lists_commands(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    for command in ("serve", "worker", "annotate", "jobs"):
        assert command in out


def test_extension_module_adds_a_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ca_test_ext.py").write_text(
        "def add_parser(subparsers):\n"
        "    p = subparsers.add_parser('hello', help='say hello')\n"
        "    p.add_argument('name')\n"
        "    p.set_defaults(func=lambda args: print(f'hello {args.name}') or 0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(cli, "COMMAND_MODULES", ("ca_test_ext",))
    assert cli.main(["hello", "world"]) == 0
    assert capsys.readouterr().out.strip() == "hello world"
    sys.modules.pop("ca_test_ext", None)


def test_serve_settings_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CALLANNOTATE_API__MAX_UPLOAD_BYTES", "1234")
    settings = cli.load_settings(
        api__port=9999, workers__concurrency=3, api__embedded_workers=False, api__host=None
    )
    assert settings.api.port == 9999
    assert settings.api.host == "127.0.0.1"
    assert settings.api.max_upload_bytes == 1234  # the environment still applies
    assert settings.workers.concurrency == 3
    assert settings.api.embedded_workers is False


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("CALLANNOTATE_API__PORT", "abc", "invalid settings: CALLANNOTATE_API__PORT: Input"),
        ("CALLANNOTATE_ALERTS__WEBHOOK_URLS", "not json", "invalid settings: error parsing"),
    ],
)
@pytest.mark.parametrize(
    "argv",
    [["users", "list"], ["voices", "list"], ["audit", "verify"], ["serve"]],
    ids=lambda argv: " ".join(argv),
)
def test_an_invalid_setting_is_one_line_not_a_traceback(
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    name: str,
    value: str,
    message: str,
) -> None:
    """Every command (not only ``serve``) names the bad environment variable, exit code 2."""
    monkeypatch.setenv(name, value)
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("callannotate: error: " + message), err
    assert len(err.strip().splitlines()) == 1


# ------------------------------------------------------------------------------ jobs (HTTP)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[str, FileQueue]]:
    """A real uvicorn server (API only) in a thread."""
    settings = Settings(data_dir=tmp_path / "srv", api=ApiSettings(embedded_workers=False))
    app = create_app(settings)
    port = free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_config=None, access_log=False)
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert srv.started
    try:
        yield f"http://127.0.0.1:{port}", app.state.queue
    finally:
        srv.should_exit = True
        thread.join(10)


def test_jobs_list_show_cancel(
    server: tuple[str, FileQueue], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import httpx

    url, _queue = server
    wav = write_wav(tmp_path / "call.wav")
    with open(wav, "rb") as fh:
        job = httpx.post(f"{url}/jobs", files={"file": ("call.wav", fh, "audio/wav")}).json()

    assert cli.main(["jobs", "--url", url, "list"]) == 0
    out = capsys.readouterr().out
    assert job["id"] in out and "queued" in out and "call.wav" in out
    assert "1 of 1 job(s)" in out

    assert cli.main(["jobs", "--url", url, "list", "--status", "completed", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["total"] == 0

    assert cli.main(["jobs", "--url", url, "show", job["id"]]) == 0
    assert json.loads(capsys.readouterr().out)["id"] == job["id"]

    assert cli.main(["jobs", "--url", url, "cancel", job["id"]]) == 0
    assert job["id"] in capsys.readouterr().out
    assert cli.main(["jobs", "--url", url, "show", job["id"]]) == 2
    assert "404 not_found" in capsys.readouterr().err


def test_jobs_unreachable_server(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    assert cli.main(["jobs", "--url", url, "--timeout", "2", "list"]) == 2
    assert "cannot reach" in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["jobs", "list"], ["status"]], ids=" ".join)
def test_a_malformed_server_url_is_one_line_not_a_traceback(
    capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    """httpx.InvalidURL is no httpx.HTTPError: it escaped as a traceback."""
    assert cli.main([argv[0], "--url", "http://[::1", *argv[1:]]) == 2
    assert capsys.readouterr().err == (
        "callannotate: error: invalid --url 'http://[::1': Invalid port: ':1'\n"
    )


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path: Path) -> None:
    """``callannotate ... | head``: the pipe closes before the output is written; the command
    stops with 141 (128 + SIGPIPE), as a shell tool does, not with a BrokenPipeError trace."""
    import os
    import subprocess

    from local_servers import callannotate_command

    env = {**os.environ, "CALLANNOTATE_DATA_DIR": str(tmp_path / "data")}
    config = Path(__file__).resolve().parents[1] / "config" / "models.yaml"
    proc = subprocess.Popen(
        [*callannotate_command(), "config", "check", str(config), "--json"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the command has imported what it needs
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


@pytest.mark.parametrize("command", [["serve", "--port", "0", "--no-workers"], ["worker"]])
def test_a_bad_master_key_stops_start_up_with_one_line_not_a_traceback(
    command: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """docs/security.md, "Master keys": a key that cannot be decoded stops start-up with a
    clear message (exit code 2), like every other bad setting."""
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLANNOTATE_ENCRYPTION__MASTER_KEY", "not-base64!")
    assert cli.main(command) == 2
    err = capsys.readouterr().err
    assert "callannotate: error: encryption.master_key: not valid base64" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("argv", [["jobs", "list"], ["status"]], ids=" ".join)
def test_without_url_the_server_of_the_settings_is_asked(
    server: tuple[str, FileQueue],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    """`CALLANNOTATE_API__PORT=9000 callannotate serve` then `callannotate status` (or `jobs`)
    asks that server, as `callannotate healthcheck` does, not a fixed 127.0.0.1:8000."""
    url, _queue = server
    monkeypatch.delenv("CALLANNOTATE_URL", raising=False)
    monkeypatch.setenv("CALLANNOTATE_API__PORT", url.rsplit(":", 1)[1])
    assert cli.main(argv) == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert ("0 of 0 job(s)" in out) if argv[0] == "jobs" else ("Queue folder:" in out)
    monkeypatch.setenv("CALLANNOTATE_URL", "http://127.0.0.1:1")  # the variable still wins
    assert cli.main(argv) == 2
    assert "cannot reach http://127.0.0.1:1" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv", [["db", "current"], ["serve", "--port", "0"], ["users", "list"]], ids=" ".join
)
def test_an_unreachable_database_is_one_line_not_a_traceback(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    """A wrong `CALLANNOTATE_DATABASE_URL` (or PostgreSQL down) printed SQLAlchemy's whole
    traceback from `serve`, `worker` and every store command."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv(
        "CALLANNOTATE_DATABASE_URL", f"postgresql+psycopg://app:pw-secret@127.0.0.1:{port}/ca"
    )
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("callannotate: error: cannot use the database: "), err
    assert f"port {port} failed" in err
    assert "Traceback" not in err and "pw-secret" not in err
    assert len(err.strip().splitlines()) <= 2  # libpq may add one hint line


def test_a_worker_whose_event_redis_is_down_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`callannotate worker` with `events.backend=redis` and Redis unreachable at start: one
    line naming Redis and exit code 2, not redis-py's traceback."""
    port = free_port()  # nothing listens there
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("CALLANNOTATE_EVENTS__BACKEND", "redis")
    monkeypatch.setenv("CALLANNOTATE_EVENTS__REDIS_URL", f"redis://:pw-secret@127.0.0.1:{port}/0")
    monkeypatch.setenv("CALLANNOTATE_WORKERS__PRELOAD_MODELS", "false")
    assert cli.main(["worker", "--workers", "1"]) == 2
    err = capsys.readouterr().err  # the start-up log lines (JSON) come before it
    last = err.strip().splitlines()[-1]
    assert last.startswith("callannotate: error: cannot reach Redis: "), err
    assert str(port) in last and "Traceback" not in err and "pw-secret" not in err
