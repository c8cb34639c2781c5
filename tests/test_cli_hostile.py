"""``callannotate`` as scripts use it: odd inputs, odd names, odd output folders, signals,
bad flags. Each command here ends with an exit code and one line, never a traceback."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import wave
from pathlib import Path

import numpy as np
import pytest

from callannotate import cli
from callannotate.pipeline.types import Annotation

QUICK = ["--steps", "preprocess"]  # no model is loaded


def write_wav(path: Path | bytes, seconds: float = 1.0, rate: int = 16000) -> Path:
    t = np.arange(int(seconds * rate)) / rate
    tone = (0.3 * np.sin(2 * np.pi * 440 * t) * 32767).astype(np.int16)
    with open(path, "wb") as fh, wave.open(fh, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(tone.tobytes())
    return Path(os.fsdecode(path))


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CALLANNOTATE_DATA_DIR", str(tmp_path / "data"))


def one_line_error(err: str) -> str:
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 or lines[0].startswith("usage:"), err
    return lines[-1]


# ------------------------------------------------------------------------------ flags


def test_an_unknown_log_level_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--log-level nonsense` was a ValueError traceback from the logging module (exit 1)."""
    call = write_wav(tmp_path / "call.wav")
    with pytest.raises(SystemExit) as exit_:
        cli.main(["annotate", str(call), "--out", str(tmp_path / "o"), "--log-level", "loud"])
    assert exit_.value.code == 2
    assert "argument --log-level: unknown log level 'loud'" in one_line_error(
        capsys.readouterr().err
    )
    assert cli.log_level(" debug ") == "DEBUG"


@pytest.mark.parametrize("command", [["jobs"], ["status"], ["healthcheck"]], ids=" ".join)
@pytest.mark.parametrize("timeout", ["-1", "0", "nan", "soon"])
def test_a_timeout_must_be_above_zero_seconds(
    command: list[str], timeout: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--timeout -1` reached the socket: `ValueError: Timeout value out of range`."""
    argv = [*command, "--url", "http://127.0.0.1:1", "--timeout", timeout]
    if command == ["jobs"]:
        argv.append("list")
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    assert "argument --timeout:" in one_line_error(capsys.readouterr().err)


def test_formats_may_be_spaced_repeated_and_upper_case(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--format "json rttm"` was refused as one unknown format `json rttm`; a format named
    twice was written (and listed) twice."""
    call = write_wav(tmp_path / "call.wav")
    out = tmp_path / "out"
    argv = ["annotate", str(call), "--out", str(out), *QUICK, "--format", " JSON rttm, json,"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines() == [str(out / "call.json"), str(out / "call.rttm")]
    assert sorted(p.name for p in out.iterdir()) == ["call.json", "call.rttm"]


# ------------------------------------------------------------------------------ inputs


def test_a_folder_or_a_fifo_is_named_as_such_not_as_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A folder or a FIFO given as input was reported as `no such file`."""
    (tmp_path / "calls").mkdir()
    os.mkfifo(tmp_path / "pipe.wav")
    loop = tmp_path / "loop.wav"
    loop.symlink_to(loop)
    argv = ["calls", "pipe.wav", "loop.wav", "gone.wav"]
    code = cli.main(["annotate", *(str(tmp_path / a) for a in argv), "--out", str(tmp_path / "o")])
    assert code == 2
    err = one_line_error(capsys.readouterr().err)
    assert f"{tmp_path / 'calls'}: a folder, not a file" in err
    assert f"{tmp_path / 'pipe.wav'}: not a regular file" in err
    assert f"{loop}: Too many levels of symbolic links" in err
    assert f"{tmp_path / 'gone.wav'}: no such file" in err
    assert not (tmp_path / "o").exists()


def test_one_file_named_twice_is_annotated_once(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`annotate *.wav call.wav` (or a link and its target) was refused: "call.wav and
    call.wav would both write call.*"; two different files of one stem still are."""
    call = write_wav(tmp_path / "call.wav")
    (tmp_path / "link.wav").symlink_to(call)
    monkeypatch.chdir(tmp_path)
    argv = ["annotate", "call.wav", "./call.wav", str(call), "link.wav", "--out", "o", *QUICK]
    assert cli.main([*argv, "-f", "json"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines() == ["o/call.json"]
    (tmp_path / "x").mkdir()
    write_wav(tmp_path / "x" / "call.wav")
    assert cli.main(["annotate", "call.wav", "x/call.wav", "--out", "o"]) == 2
    assert "rename one" in capsys.readouterr().err


def test_a_name_that_is_not_utf8_is_annotated(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A file name with a byte that is not UTF-8 failed the whole run at the end
    (`PydanticSerializationError ... surrogates not allowed`)."""
    call = write_wav(os.fsencode(tmp_path) + b"/bad\xff.wav")
    out = tmp_path / "out"
    assert cli.main(["annotate", str(call), "--out", str(out), *QUICK, "-f", "json,srt"]) == 0
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{out}/bad\\xff.json", f"{out}/bad\\xff.srt"]
    target = Path(os.fsdecode(os.fsencode(out) + b"/bad\xff.json"))
    annotation = Annotation.model_validate_json(target.read_bytes())
    assert annotation.recording.filename == "bad\ufffd.wav"


def test_a_newline_or_escape_in_a_name_stays_on_its_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list of written files is one line per file: a newline in a name split it in two,
    and an escape sequence in a name recoloured the terminal."""
    a = write_wav(tmp_path / "new\nline.wav")
    b = tmp_path / "esc\x1b[31m.wav"
    b.write_bytes(b"not audio")
    out = tmp_path / "out"
    assert cli.main(["annotate", str(a), str(b), "--out", str(out), *QUICK, "-f", "json"]) == 1
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [f"{out}/new\\x0aline.json"]
    assert "\x1b" not in captured.err
    assert one_line_error(captured.err).startswith(f"{tmp_path}/esc\\x1b[31m.wav: invalid_audio")
    assert (out / "new\nline.json").is_file()


def test_long_names(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A report name that fits the file system (255 bytes) failed after the annotation: the
    temp file's name (`.<name>.<random>.tmp`) did not fit. One that does not fit is refused
    before any model loads."""
    stem = "x" * 245
    call = write_wav(tmp_path / f"{stem}.wav")
    out = tmp_path / "out"
    assert cli.main(["annotate", str(call), "--out", str(out), *QUICK, "-f", "json"]) == 0
    assert [p.name for p in out.iterdir()] == [f"{stem}.json"]
    capsys.readouterr()
    assert cli.main(["annotate", str(call), "--out", str(out), *QUICK, "-f", "json,csv"]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "callannotate: error: output file name too long (260 bytes, at most 255): "
        f"{stem}.utterances.csv; rename {call}"
    )


def test_a_report_never_replaces_an_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A recording whose name is a report's (`x.json`, `x.srt`: ffmpeg goes by content) was
    overwritten by its own report when `--out` was its folder."""
    call = write_wav(tmp_path / "call.srt")
    before = call.read_bytes()
    argv = ["annotate", str(call), "--out", str(tmp_path), *QUICK, "-f", "json,srt"]
    assert cli.main(argv) == 2
    assert one_line_error(capsys.readouterr().err) == (
        f"callannotate: error: the srt report of {call} would replace the input {call}; "
        "choose another --out"
    )
    assert call.read_bytes() == before
    assert not (tmp_path / "call.json").exists()


# ------------------------------------------------------------------------------ output folder


def test_an_invalid_setting_makes_no_output_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The output folder was created before the settings were read and refused."""
    call = write_wav(tmp_path / "call.wav")
    monkeypatch.setenv("CALLANNOTATE_WORKERS__CONCURRENCY", "-3")
    assert cli.main(["annotate", str(call), "--out", str(tmp_path / "o")]) == 2
    assert "CALLANNOTATE_WORKERS__CONCURRENCY" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_out_dash_is_refused_not_made_a_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`--out -` (stdout, as many tools read it) made a folder named `-`."""
    write_wav(tmp_path / "call.wav")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["annotate", "call.wav", "--out", "-", *QUICK]) == 2
    assert "--out - (stdout) is not supported" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "-").exists()
    assert cli.main(["annotate", "call.wav", "--out", "./-", *QUICK, "-q"]) == 0


@pytest.mark.parametrize("command", [["worker"], ["serve", "--port", "0"]], ids=" ".join)
def test_an_unknown_log_level_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """`CALLANNOTATE_LOG__LEVEL=loud` stopped `serve` / `worker` with the logging module's
    `ValueError: Unknown level: 'LOUD'` traceback."""
    monkeypatch.setenv("CALLANNOTATE_LOG__LEVEL", "loud")
    assert cli.main(command) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "callannotate: error: invalid settings: CALLANNOTATE_LOG__LEVEL: unknown log level "
        "'loud'; one of DEBUG, INFO, WARNING, ERROR"
    )


def test_a_broken_models_file_is_said_once_not_once_per_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`CALLANNOTATE_MODELS_CONFIG` naming a missing or broken file failed every input in
    turn with the same `configuration_error` line (exit 1), after making the output folder."""
    files = [str(write_wav(tmp_path / f"{n}.wav")) for n in "abc"]
    monkeypatch.setenv("CALLANNOTATE_MODELS_CONFIG", str(tmp_path / "gone.yaml"))
    assert cli.main(["annotate", *files, "--out", str(tmp_path / "o"), *QUICK]) == 2
    assert one_line_error(capsys.readouterr().err) == (
        "callannotate: error: models config gone.yaml does not exist"
    )
    assert not (tmp_path / "o").exists()


def test_an_output_folder_that_cannot_be_written_is_refused_before_annotating(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An existing folder that takes no files (no permission, read-only, `/proc`) was found
    out only when the first report was written, after the annotation (exit 1)."""
    call = write_wav(tmp_path / "call.wav")
    assert cli.main(["annotate", str(call), "--out", "/proc/self", *QUICK]) == 2
    err = one_line_error(capsys.readouterr().err)
    assert err.startswith("callannotate: error: cannot write to the output folder /proc/self:")


def test_a_report_that_cannot_be_written_is_named(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full disk printed `call.wav: OSError: [Errno 28] No space left on device`, without
    the report it could not write; the next file is still annotated."""
    a = write_wav(tmp_path / "a.wav")
    b = write_wav(tmp_path / "b.wav")
    out = tmp_path / "out"
    real = cli._write_atomic

    def full_disk(path: Path, data: bytes) -> None:
        if path.name == "a.rttm":
            raise OSError(28, os.strerror(28))
        real(path, data)

    monkeypatch.setattr(cli, "_write_atomic", full_disk)
    assert cli.main(["annotate", str(a), str(b), "--out", str(out), *QUICK]) == 1
    captured = capsys.readouterr()
    line = one_line_error(captured.err)
    assert line == f"{a}: cannot write {out / 'a.rttm'}: No space left on device"
    assert captured.out.splitlines() == [str(out / "b.json"), str(out / "b.rttm")]


# ------------------------------------------------------------------------------ signals

_SLOW_WRITE = """
import sys, time
from callannotate import cli

real = cli._umask

def slow_umask():  # called while the temp file of a report exists, before its rename
    open(sys.argv[1], "w").close()
    time.sleep(120)
    return real()

cli._umask = slow_umask
sys.exit(cli.main(sys.argv[2:]))
"""


def test_sigterm_while_a_report_is_written_leaves_no_temp_file(tmp_path: Path) -> None:
    """SIGTERM (`timeout`, `kill`, a scheduler) ended the process on the spot: a report being
    written left its `.<name>.<random>.tmp` behind. It now unwinds like Ctrl-C: temp file
    removed, exit code 143."""
    call = write_wav(tmp_path / "call.wav")
    out = tmp_path / "out"
    marker = tmp_path / "writing"
    env = {**os.environ, "CALLANNOTATE_DATA_DIR": str(tmp_path / "data")}
    argv = ["annotate", str(call), "--out", str(out), *QUICK, "-f", "json"]
    proc = subprocess.Popen(
        [sys.executable, "-c", _SLOW_WRITE, str(marker), *argv],
        env=env,
        stderr=subprocess.PIPE,
    )
    try:
        while not marker.exists() and proc.poll() is None:
            time.sleep(0.1)
        assert next(p.name for p in out.iterdir()).endswith(".tmp")  # caught mid-write
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=120) == 143
    finally:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    assert "Traceback" not in proc.stderr.read().decode()
    assert list(out.iterdir()) == []


def test_ctrl_c_says_interrupted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C ended with exit code 130 and nothing on stderr."""
    call = write_wav(tmp_path / "call.wav")

    def interrupted(args: object) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_annotate_files", interrupted)
    assert cli.main(["annotate", str(call), "--out", str(tmp_path)]) == 130
    assert capsys.readouterr().err == "callannotate: interrupted\n"
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # handler restored


# ------------------------------------------------------------------------------ other commands


@pytest.mark.parametrize(
    "command",
    [
        ["config", "check", "{dir}"],
        ["contacts", "export", "{dir}"],
        ["keys", "--data-dir", "{file}", "list"],
    ],
    ids=["config check DIR", "contacts export DIR", "keys --data-dir FILE"],
)
def test_a_file_system_error_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """`config check DIR`, `contacts export DIR`, `keys --data-dir FILE`, `models prepare
    --cache-dir FILE` printed an OSError traceback (exit 1)."""
    (tmp_path / "file").write_text("not a folder")
    argv = [a.format(dir=tmp_path, file=tmp_path / "file") for a in command]
    assert cli.main(argv) == 1
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith("callannotate: error: "), line
    assert ("Is a directory" in line) or ("Not a directory" in line), line


def test_config_check_of_a_binary_file_says_it_is_not_yaml(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`config check call.wav` printed a UnicodeDecodeError traceback."""
    call = write_wav(tmp_path / "call.wav")
    call.write_bytes(call.read_bytes() + bytes(range(128, 256)))
    assert cli.main(["config", "check", str(call)]) == 2
    assert "not valid YAML" in one_line_error(capsys.readouterr().err)
