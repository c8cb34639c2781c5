"""Encryption at rest: the chunked AES-256-GCM file format, master keys, rotation, sealing."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import secrets
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from callannotate.config import EncryptionSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from callannotate.pipeline.asr.streaming import WavRecorder
from callannotate.pipeline.audio import decode as audio_io
from callannotate.security.atrest import Vault, vault_for
from callannotate.security.envelope import (
    HEADER_SIZE,
    MAGIC,
    TAG_SIZE,
    DecryptingReader,
    DecryptionError,
    EncryptingWriter,
    Header,
    decrypt_bytes,
    encrypt_bytes,
)
from callannotate.security.masterkeys import (
    MasterKeyError,
    MasterKeyRing,
    key_file_path,
    kid_for,
    read_key_file,
)
from callannotate.security.secrets import SealedDataError, is_sealed, seal, unseal
from callannotate.voices.schemas import Voice
from callannotate.voices.store import VoiceStore

CHUNK = 4096


def make_settings(tmp_path: Path, **enc: object) -> Settings:
    return Settings(data_dir=tmp_path / "data", encryption=EncryptionSettings(**enc))  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path, chunk_size=CHUNK)


@pytest.fixture
def vault(settings: Settings) -> Vault:
    return Vault(settings)


@pytest.fixture
def ring(vault: Vault) -> MasterKeyRing:
    return vault.ring


def encrypt(ring: MasterKeyRing, data: bytes, chunk: int = CHUNK) -> bytes:
    return encrypt_bytes(ring, data, chunk_size=chunk)


# --------------------------------------------------------------------------- format


@pytest.mark.parametrize("size", [0, 1, CHUNK - 1, CHUNK, CHUNK + 1, 3 * CHUNK, 3 * CHUNK + 17])
def test_round_trip_and_layout(ring: MasterKeyRing, size: int) -> None:
    data = secrets.token_bytes(size)
    blob = encrypt(ring, data)
    chunks = max(1, -(-size // CHUNK))
    assert blob.startswith(MAGIC)
    assert len(blob) == HEADER_SIZE + size + chunks * TAG_SIZE
    assert decrypt_bytes(ring, blob) == data
    header = Header.parse(blob[:HEADER_SIZE])
    assert header.kid == ring.current.kid
    assert header.chunk_size == CHUNK


def test_streamed_writes_of_any_size_give_the_same_plaintext(ring: MasterKeyRing) -> None:
    data = secrets.token_bytes(10 * CHUNK + 123)
    out = io.BytesIO()
    writer = EncryptingWriter(out, ring, chunk_size=CHUNK, close_raw=False)
    rng = random.Random(7)
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 7, CHUNK - 1, CHUNK, CHUNK + 5, 3 * CHUNK])
        writer.write(data[pos : pos + step])
        pos += step
    writer.close()
    assert writer.plaintext_bytes == len(data)
    assert decrypt_bytes(ring, out.getvalue()) == data


def test_the_same_plaintext_encrypts_differently_each_time(ring: MasterKeyRing) -> None:
    data = b"the same call" * 1000
    assert encrypt(ring, data) != encrypt(ring, data)


def test_ciphertext_holds_no_plaintext_run(ring: MasterKeyRing) -> None:
    data = b"confidential call audio " * 5000
    blob = encrypt(ring, data)
    assert b"confidential" not in blob


def _chunk_bounds(blob: bytes, index: int) -> tuple[int, int]:
    stride = Header.parse(blob[:HEADER_SIZE]).chunk_size + TAG_SIZE
    start = HEADER_SIZE + index * stride
    return start, min(start + stride, len(blob))


@pytest.mark.parametrize("where", ["first chunk", "last chunk", "tag"])
def test_a_flipped_body_bit_is_detected(ring: MasterKeyRing, where: str) -> None:
    blob = bytearray(encrypt(ring, secrets.token_bytes(3 * CHUNK + 10)))
    offset = {"first chunk": HEADER_SIZE + 5, "last chunk": len(blob) - 20, "tag": len(blob) - 1}
    blob[offset[where]] ^= 0x01
    with pytest.raises(DecryptionError, match="failed authentication"):
        decrypt_bytes(ring, bytes(blob))


@pytest.mark.parametrize(
    ("offset", "error"),
    [
        (10, DecryptionError),  # chunk size field: bound into every chunk's associated data
        (16, DecryptionError),  # nonce prefix
        (60, DecryptionError),  # wrapped data key
        (22, MasterKeyError),  # key id: names a key that does not exist
    ],
)
def test_a_tampered_header_is_detected(
    ring: MasterKeyRing, offset: int, error: type[Exception]
) -> None:
    blob = bytearray(encrypt(ring, secrets.token_bytes(2 * CHUNK)))
    blob[offset] ^= 0x01
    with pytest.raises(error):
        decrypt_bytes(ring, bytes(blob))


def test_truncation_at_a_chunk_boundary_is_detected_on_open(ring: MasterKeyRing) -> None:
    blob = encrypt(ring, secrets.token_bytes(4 * CHUNK + 100))
    cut = _chunk_bounds(blob, 3)[0]  # drop the last two chunks: what stays authenticates alone
    with pytest.raises(DecryptionError, match="chunk 2 failed"):
        DecryptingReader(io.BytesIO(blob[:cut]), ring)


@pytest.mark.parametrize("cut", [1, TAG_SIZE, TAG_SIZE + 1, 500])
def test_truncation_inside_a_chunk_is_detected(ring: MasterKeyRing, cut: int) -> None:
    blob = encrypt(ring, secrets.token_bytes(2 * CHUNK + 100))
    with pytest.raises(DecryptionError):
        decrypt_bytes(ring, blob[:-cut])


def test_a_header_alone_is_refused(ring: MasterKeyRing) -> None:
    blob = encrypt(ring, b"x" * 10)
    with pytest.raises(DecryptionError, match="truncated"):
        decrypt_bytes(ring, blob[:HEADER_SIZE])


def test_reordered_chunks_are_detected(ring: MasterKeyRing) -> None:
    blob = encrypt(ring, secrets.token_bytes(4 * CHUNK))
    a0, a1 = _chunk_bounds(blob, 0)
    b0, b1 = _chunk_bounds(blob, 1)
    swapped = blob[:a0] + blob[b0:b1] + blob[a0:a1] + blob[b1:]
    assert len(swapped) == len(blob)
    with pytest.raises(DecryptionError, match="chunk 0 failed"):
        decrypt_bytes(ring, swapped)


def test_a_chunk_from_another_file_is_detected(ring: MasterKeyRing) -> None:
    one = encrypt(ring, secrets.token_bytes(2 * CHUNK))
    two = encrypt(ring, secrets.token_bytes(2 * CHUNK))
    a, b = _chunk_bounds(one, 0)
    with pytest.raises(DecryptionError):
        decrypt_bytes(ring, one[:a] + two[a:b] + one[b:])


def test_a_header_moved_onto_another_file_is_detected(ring: MasterKeyRing) -> None:
    one = encrypt(ring, secrets.token_bytes(CHUNK))
    two = encrypt(ring, secrets.token_bytes(CHUNK))
    with pytest.raises(DecryptionError):
        decrypt_bytes(ring, one[:HEADER_SIZE] + two[HEADER_SIZE:])


# --------------------------------------------------------------------------- random access


def test_range_reads_across_chunk_boundaries(ring: MasterKeyRing) -> None:
    data = secrets.token_bytes(5 * CHUNK + 333)
    reader = DecryptingReader(io.BytesIO(encrypt(ring, data)), ring)
    assert reader.size == len(data)
    cases = [
        (0, 10),
        (CHUNK - 3, 6),  # straddles chunks 0 and 1
        (CHUNK, CHUNK),  # exactly chunk 1
        (CHUNK - 1, 3 * CHUNK + 2),  # spans four chunks
        (2 * CHUNK + 100, 2 * CHUNK),
        (len(data) - 5, 100),  # past the end: shortened
        (len(data), 10),  # at the end: empty
    ]
    rng = random.Random(3)
    cases += [(rng.randrange(len(data)), rng.randrange(1, 3 * CHUNK)) for _ in range(200)]
    for start, length in cases:
        assert reader.read_range(start, length) == data[start : start + length], (start, length)


def test_seek_and_buffered_reads(vault: Vault, tmp_path: Path) -> None:
    data = secrets.token_bytes(3 * CHUNK + 7)
    path = tmp_path / "f.bin"
    vault.write_bytes(path, data)
    with vault.open_read(path) as fh:
        fh.seek(-10, os.SEEK_END)
        assert fh.read() == data[-10:]
        fh.seek(CHUNK - 2)
        assert fh.read(5) == data[CHUNK - 2 : CHUNK + 3]
        assert fh.tell() == CHUNK + 3
    assert vault.plaintext_size(path) == len(data)


def test_a_range_read_decrypts_only_the_chunks_it_needs(ring: MasterKeyRing) -> None:
    """A corrupt chunk far from the range does not stop it (only the final chunk is checked
    up front), so seeking in a long recording costs a few chunks, not the whole file."""
    data = secrets.token_bytes(6 * CHUNK + 1)
    blob = bytearray(encrypt(ring, data))
    blob[_chunk_bounds(bytes(blob), 4)[0] + 3] ^= 0x80
    reader = DecryptingReader(io.BytesIO(bytes(blob)), ring)
    assert reader.read_range(CHUNK + 10, CHUNK) == data[CHUNK + 10 : 2 * CHUNK + 10]
    with pytest.raises(DecryptionError, match="chunk 4"):
        reader.read_range(4 * CHUNK, 10)


# --------------------------------------------------------------------------- files and keys


def test_key_file_is_created_private_and_reused(settings: Settings) -> None:
    ring = MasterKeyRing.from_settings(settings)
    path = key_file_path(settings)
    assert path == settings.data_dir / "secrets" / "master-keys.json"
    assert path.stat().st_mode & 0o777 == 0o600
    assert path.parent.stat().st_mode & 0o777 == 0o700
    again = MasterKeyRing.from_settings(settings)
    assert again.current.kid == ring.current.kid
    assert again.current.key == ring.current.key


def test_master_key_from_a_secret_setting(tmp_path: Path) -> None:
    key = secrets.token_bytes(32)
    settings = make_settings(tmp_path, master_key=base64.b64encode(key).decode())
    ring = MasterKeyRing.from_settings(settings)
    assert ring.current.kid == kid_for(key)
    assert not key_file_path(settings).exists()  # no key file when the setting is used
    blob = encrypt(ring, b"hello")
    # A restart (new ring from the same setting) still opens it.
    assert decrypt_bytes(MasterKeyRing.from_settings(settings), blob) == b"hello"


@pytest.mark.parametrize("value", ["not base64 !!", base64.b64encode(b"short").decode()])
def test_a_bad_master_key_setting_is_a_clear_error(tmp_path: Path, value: str) -> None:
    with pytest.raises(MasterKeyError, match=r"encryption\.master_key"):
        MasterKeyRing.from_settings(make_settings(tmp_path, master_key=value))


def test_previous_master_keys_from_settings_still_unwrap(tmp_path: Path) -> None:
    old, new = secrets.token_bytes(32), secrets.token_bytes(32)
    b64 = lambda k: base64.b64encode(k).decode()  # noqa: E731
    blob = encrypt(MasterKeyRing.from_settings(make_settings(tmp_path, master_key=b64(old))), b"x")
    ring = MasterKeyRing.from_settings(
        make_settings(tmp_path, master_key=b64(new), previous_master_keys=[b64(old)])
    )
    assert decrypt_bytes(ring, blob) == b"x"
    missing = MasterKeyRing.from_settings(make_settings(tmp_path, master_key=b64(new)))
    with pytest.raises(MasterKeyError, match="not available"):
        decrypt_bytes(missing, blob)


def test_plaintext_files_from_older_versions_stay_readable(vault: Vault, tmp_path: Path) -> None:
    old = tmp_path / "old.wav"
    old.write_bytes(b"RIFF plain old recording")
    with vault.open_read(old) as fh:
        assert fh.read() == b"RIFF plain old recording"
    assert vault.plaintext_size(old) == len(b"RIFF plain old recording")
    assert not vault.is_encrypted(old)


def test_encryption_disabled_writes_plaintext_but_still_reads_encrypted(tmp_path: Path) -> None:
    on = Vault(make_settings(tmp_path, chunk_size=CHUNK))
    off = Vault(make_settings(tmp_path, enabled=False, chunk_size=CHUNK))
    on.write_bytes(tmp_path / "a", b"secret")
    off.write_bytes(tmp_path / "b", b"open")
    assert (tmp_path / "b").read_bytes() == b"open"
    assert off.read_bytes(tmp_path / "a") == b"secret"


def test_rotation_rewraps_headers_without_touching_bodies(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, chunk_size=CHUNK)
    vault = Vault(settings)
    files = {}
    for i, size in enumerate([0, 10, 5 * CHUNK + 1]):
        folder = settings.data_dir / "queue" / "completed" / f"job{i}"
        folder.mkdir(parents=True)
        files[folder / "audio.wav"] = secrets.token_bytes(size)
        vault.write_bytes(folder / "audio.wav", files[folder / "audio.wav"])
    legacy = settings.data_dir / "queue" / "completed" / "legacy.json"
    legacy.write_text("{}")
    old_kid = vault.ring.current.kid
    before = {p: p.read_bytes() for p in files}

    from callannotate.security.keys_cli import _cmd_rotate

    class Args:
        data_dir = str(settings.data_dir)
        no_rewrap = False

    env = os.environ.get("CALLANNOTATE_DATA_DIR")
    assert _cmd_rotate(Args()) == 0  # type: ignore[arg-type]
    assert os.environ.get("CALLANNOTATE_DATA_DIR") == env

    keys = read_key_file(key_file_path(settings))
    assert keys[0].kid == old_kid
    new_kid = next(k.kid for k in keys if k.current)
    assert new_kid != old_kid
    for path, plain in files.items():
        after = path.read_bytes()
        assert after[HEADER_SIZE:] == before[path][HEADER_SIZE:]  # ciphertext body untouched
        assert after[:21] == before[path][:21]  # magic, version, chunk size, nonce prefix
        assert Header.parse(after[:HEADER_SIZE]).kid == new_kid
        # Readable with the new key alone: the old one is no longer needed for these files.
        only_new = MasterKeyRing([k for k in keys if k.current])
        assert decrypt_bytes(only_new, after) == plain
    assert legacy.read_text() == "{}"
    # A second pass has nothing left to do.
    report = Vault(settings).rewrap_tree(settings.data_dir)
    assert report.rewrapped == [] and report.already_current == 3 and report.plaintext == 1


def test_keys_cli_list_and_rotate(tmp_path: Path) -> None:
    data = tmp_path / "data"
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "callannotate.cli", "keys", "--data-dir", str(data), *a],
        capture_output=True,
        text=True,
        check=True,
    )
    first = run("list").stdout
    assert "current" in first
    Vault(make_settings(tmp_path)).write_bytes(tmp_path / "data" / "x.bin", b"abc")
    rotated = run("rotate").stdout
    assert "re-wrapped 1 file(s)" in rotated
    listing = run("list", "--files").stdout.splitlines()
    assert len([line for line in listing if line.startswith("k-")]) == 2
    assert any("current  files 1" in line for line in listing)
    assert any("old  files 0" in line for line in listing)
    stored = json.loads((data / "secrets" / "master-keys.json").read_text())
    assert sum(k["current"] for k in stored["keys"]) == 1


def _plaintext_data_folder(tmp_path: Path) -> tuple[Settings, dict[Path, bytes]]:
    """A data folder as an older version (encryption off) left it: a completed job (audio,
    result.json, job.json), a voiceprint and a finished stream capture."""
    from callannotate.jobs.models import AudioMeta, Job

    plain = make_settings(tmp_path, enabled=False, chunk_size=CHUNK)
    queue = FileQueue(plain.queue_dir, plain.queue, Vault(plain))
    audio = secrets.token_bytes(3 * CHUNK + 5)
    staged = queue.staging_dir() / "a.wav"
    staged.write_bytes(audio)
    meta = AudioMeta(
        filename="a.wav",
        stored_as="audio.wav",
        size_bytes=len(audio),
        format="wav",
        codec="",
        sample_rate=16000,
        channels=1,
        duration=1.0,
    )
    job = queue.submit(Job(id=queue.new_job_id(), owner="o", audio=meta), staged)
    assert queue.claim("w") is not None
    queue.complete(job.id, b'{"text": "the secret call"}')
    VoiceStore(plain.voices_dir, Vault(plain)).create(
        Voice(id="c" * 32, name="Old Voice", embedding_model="m")
    )
    capture = queue.staging_dir() / f"stream-{'d' * 32}.wav"
    capture.write_bytes(b"RIFF" + secrets.token_bytes(100))
    job_dir = queue.job_dir(job.id)
    files = [job_dir / "audio.wav", job_dir / "result.json", plain.voices_dir / f"{'c' * 32}.json"]
    files.append(capture)
    return plain, {path: path.read_bytes() for path in files}


def test_keys_encrypt_existing_encrypts_old_plaintext_files_once(tmp_path: Path) -> None:
    plain, originals = _plaintext_data_folder(tmp_path)
    job_json = next(plain.queue_dir.glob("completed/*/job.json"))
    job_json_before = job_json.read_bytes()
    modes = {path: path.stat().st_mode for path in originals}
    leftover = plain.voices_dir / ".x.json.1234.encrypting"  # a run killed half-way
    leftover.write_bytes(b"partial")
    data = str(plain.data_dir)
    command = [sys.executable, "-m", "callannotate.cli", "keys", "--data-dir", data]
    env = dict(os.environ, CALLANNOTATE_ENCRYPTION__ENABLED="true")
    first = subprocess.run(
        [*command, "encrypt-existing"], capture_output=True, text=True, env=env, check=True
    )
    assert "encrypted 4 file(s); 0 already encrypted" in first.stdout
    on = make_settings(tmp_path, chunk_size=CHUNK)
    vault = Vault(on)
    for path, content in originals.items():
        stored = path.read_bytes()
        assert stored.startswith(MAGIC), path
        assert content not in stored
        assert vault.read_bytes(path) == content
        assert path.stat().st_mode == modes[path]
    assert job_json.read_bytes() == job_json_before  # plaintext by design
    assert not leftover.exists()
    # what the service reads: the result and the voice, through their stores
    queue = FileQueue(on.queue_dir, on.queue, vault)
    assert queue.read_result(job_json.parent.name) == b'{"text": "the secret call"}'
    assert VoiceStore(on.voices_dir, vault).get("c" * 32).name == "Old Voice"
    # idempotent: a second run changes nothing
    before = {path: path.read_bytes() for path in originals}
    second = subprocess.run(
        [*command, "encrypt-existing"], capture_output=True, text=True, env=env, check=True
    )
    assert "encrypted 0 file(s); 4 already encrypted" in second.stdout
    assert {path: path.read_bytes() for path in originals} == before


def test_encrypt_existing_is_crash_safe(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from callannotate.security import atrest

    _, originals = _plaintext_data_folder(tmp_path)
    on = make_settings(tmp_path, chunk_size=CHUNK)

    real_replace = os.replace

    def crash(src: str, dst: str) -> None:
        if str(src).endswith(".encrypting"):  # only the rename of an encrypted copy
            raise OSError("simulated crash before the rename")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", crash)
    report = atrest.encrypt_existing(on)
    assert len(report.failed) == 4 and not report.encrypted
    for path, content in originals.items():  # every original intact, no temporary left
        assert path.read_bytes() == content
        assert not list(path.parent.glob(".*.encrypting"))
    monkeypatch.undo()
    assert len(atrest.encrypt_existing(on).encrypted) == 4


def test_encrypt_existing_needs_encryption_on(tmp_path: Path) -> None:
    data = str(tmp_path / "data")
    result = subprocess.run(
        [sys.executable, "-m", "callannotate.cli", "keys", "--data-dir", data, "encrypt-existing"],
        capture_output=True,
        text=True,
        env=dict(os.environ, CALLANNOTATE_ENCRYPTION__ENABLED="false"),
    )
    assert result.returncode == 2
    assert "encryption.enabled is false" in result.stderr


def test_a_running_process_sees_a_rotation(settings: Settings) -> None:
    ring = MasterKeyRing.from_settings(settings)
    old = ring.current.kid
    from callannotate.security.masterkeys import rotate_key_file

    new = rotate_key_file(key_file_path(settings))
    assert ring.reload() is True
    assert ring.current.kid == new.kid != old


# --------------------------------------------------------------------------- seal / unseal


def test_seal_round_trip_and_context(settings: Settings) -> None:
    blob = seal(settings, b"carddav-password", context=b"source:1")
    assert is_sealed(blob)
    assert b"carddav-password" not in blob
    assert unseal(settings, blob, context=b"source:1") == b"carddav-password"
    with pytest.raises(SealedDataError, match="context"):
        unseal(settings, blob, context=b"source:2")
    tampered = bytearray(blob)
    tampered[-1] ^= 1
    with pytest.raises(SealedDataError, match="failed authentication"):
        unseal(settings, bytes(tampered), context=b"source:1")
    with pytest.raises(SealedDataError):
        unseal(settings, b"not sealed at all", context=b"source:1")


def test_seal_survives_rotation(settings: Settings) -> None:
    from callannotate.security.masterkeys import rotate_key_file

    blob = seal(settings, b"pw")
    rotate_key_file(key_file_path(settings))
    vault_for(settings).ring.reload()
    assert unseal(settings, blob) == b"pw"
    assert (
        Header.parse(seal(settings, b"pw")[:HEADER_SIZE]).kid
        != Header.parse(blob[:HEADER_SIZE]).kid
    )


# --------------------------------------------------------------------------- stores


def test_result_json_is_encrypted_and_old_results_stay_readable(settings: Settings) -> None:
    from callannotate.jobs.models import AudioMeta, Job

    vault = vault_for(settings)
    queue = FileQueue(settings.queue_dir, settings.queue, vault)

    def run_job(payload: bytes) -> str:
        staged = queue.staging_dir() / "a.wav"
        staged.write_bytes(b"RIFF")
        meta = AudioMeta(
            filename="a.wav",
            stored_as="audio.wav",
            size_bytes=4,
            format="wav",
            codec="",
            sample_rate=16000,
            channels=1,
            duration=1.0,
        )
        job = queue.submit(Job(id=queue.new_job_id(), owner="o", audio=meta), staged)
        assert queue.claim("w") is not None
        queue.complete(job.id, payload)
        return job.id

    job_id = run_job(b'{"secret": "transcript"}')
    stored = queue.job_dir(job_id) / "result.json"
    assert stored.read_bytes().startswith(MAGIC)
    assert queue.read_result(job_id) == b'{"secret": "transcript"}'
    stored.write_bytes(b'{"legacy": true}')  # as written by an older version
    assert queue.read_result(job_id) == b'{"legacy": true}'


def test_voice_files_are_encrypted_and_old_ones_stay_readable(settings: Settings) -> None:
    store = VoiceStore(settings.voices_dir, vault_for(settings))
    voice = store.create(Voice(id="a" * 32, name="Анна Секретная", embedding_model="m"))
    raw = (settings.voices_dir / f"{voice.id}.json").read_bytes()
    assert raw.startswith(MAGIC)
    assert "Анна".encode() not in raw
    assert store.get(voice.id).name == "Анна Секретная"
    legacy = Voice(id="b" * 32, name="Old", embedding_model="m")
    (settings.voices_dir / f"{legacy.id}.json").write_text(legacy.model_dump_json())
    assert [v.name for v in store.list()] == ["Old", "Анна Секретная"]


def test_stream_capture_is_encrypted_and_decodes(settings: Settings, tmp_path: Path) -> None:
    vault = vault_for(settings)
    path = tmp_path / "staging" / "stream-x.wav"
    recorder = WavRecorder(path, vault=vault)
    rng = np.random.default_rng(1)
    audio = (0.3 * rng.standard_normal(16000 * 3)).astype(np.float32)
    for i in range(0, audio.size, 1600):
        recorder.write(audio[i : i + 1600])
    assert not path.exists()  # the WAV appears only once complete
    assert vault.is_encrypted(path.with_name("stream-x.wav.pcm"))  # the capture so far
    recorder.close()
    assert sorted(p.name for p in path.parent.iterdir()) == ["stream-x.wav"]  # .pcm removed
    assert vault.is_encrypted(path)
    pcm = (np.clip(audio, -1, 1) * 32767.0).astype("<i2").tobytes()
    assert pcm[16000:16064] not in path.read_bytes()
    probe = audio_io.probe(path, vault=vault)
    assert (probe.format, probe.sample_rate, probe.channels) == ("wav", 16000, 1)
    assert probe.duration == pytest.approx(3.0)
    decoded = audio_io.decode(path, settings=settings)
    assert decoded.samples.shape == (1, 48000)
    assert np.allclose(
        decoded.samples[0], np.round(np.clip(audio, -1, 1) * 32767) / 32768, atol=1e-3
    )


def test_decode_reads_encrypted_audio_without_a_plaintext_copy(
    settings: Settings, tmp_path: Path
) -> None:
    import soundfile as sf

    plain = tmp_path / "in.flac"
    t = np.arange(16000) / 16000
    sf.write(plain, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 16000)
    stored = tmp_path / "store" / "audio.flac"
    stored.parent.mkdir()
    vault = vault_for(settings)
    vault.write_bytes(stored, plain.read_bytes())
    a = audio_io.decode(plain)
    b = audio_io.decode(stored, settings=settings)
    assert np.array_equal(a.samples, b.samples)
    assert os.listdir(stored.parent) == ["audio.flac"]
