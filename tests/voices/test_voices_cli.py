"""``callannotate voices`` refuses bad arguments with one line and exit code 2, before any
model is loaded (no traceback)."""

from __future__ import annotations

from pathlib import Path

import pytest

from callannotate import cli


def test_enroll_refuses_a_name_longer_than_the_api_allows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Was a pydantic ValidationError traceback, after the samples had been embedded."""
    sample = tmp_path / "ivan.wav"
    sample.write_bytes(b"RIFF not decoded: the name is checked first")
    data = str(tmp_path / "data")
    code = cli.main(["voices", "--data-dir", data, "enroll", "N" * 201, str(sample)])
    assert code == 2
    assert capsys.readouterr().err == (
        "callannotate: error: the voice name is longer than 200 characters\n"
    )
    voices = tmp_path / "data" / "voices"
    assert not voices.exists() or not any(voices.iterdir())


@pytest.mark.parametrize("top", ["0", "-1", "abc"])
def test_identify_refuses_a_top_below_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], top: str
) -> None:
    """``--top 0`` said "no voices enrolled" with voices enrolled; ``--top -1`` dropped the
    last candidate."""
    sample = tmp_path / "call.wav"
    sample.write_bytes(b"RIFF")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["voices", "--data-dir", str(tmp_path), "identify", str(sample), "--top", top])
    assert exit_info.value.code == 2
    assert "argument --top:" in capsys.readouterr().err


def test_enroll_refuses_a_name_the_local_user_already_has(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A second "Ivan" was enrolled beside the first; now exit 2 before any sample is read."""
    from callannotate.voices.schemas import Voice
    from callannotate.voices.store import VoiceStore

    data = tmp_path / "data"
    ivan = Voice(id="a" * 32, name="Ivan", embedding_model="campplus_cn_en_common")
    VoiceStore(data / "voices").create(ivan)
    sample = tmp_path / "ivan.wav"
    sample.write_bytes(b"RIFF not decoded: the name is checked first")
    code = cli.main(["voices", "--data-dir", str(data), "enroll", "IVAN", str(sample)])
    assert code == 2
    assert capsys.readouterr().err == (
        f"callannotate: error: a voice named 'Ivan' already exists ({ivan.id}): add samples "
        "to it, or choose another name\n"
    )
    assert [v.id for v in VoiceStore(data / "voices").list()] == [ivan.id]
