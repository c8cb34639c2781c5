"""Encryption at rest through the API: uploads are stored encrypted, ``GET /jobs/{id}/audio``
serves the plaintext with working ``Range`` requests, and older plaintext files still play.

The end-to-end test (marked ``models``) runs the real pipeline in embedded worker processes
and then scans every file under the data folder for the recording's PCM and file bytes.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from callannotate.api.app import create_app
from callannotate.config import ApiSettings, EncryptionSettings, Settings, WorkerSettings
from callannotate.jobs.filequeue import FileQueue
from callannotate.security.atrest import vault_for
from callannotate.security.envelope import MAGIC

CHUNK = 4096  # small chunks: a one-second test recording spans many of them


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False, max_upload_bytes=256 * 1024),
        encryption=EncryptionSettings(chunk_size=CHUNK),
    )


async def _upload(client: httpx.AsyncClient, path: Path) -> str:
    response = await client.post(
        "/jobs", files={"file": (path.name, path.read_bytes(), "application/octet-stream")}
    )
    assert response.status_code == 202, response.text
    return str(response.json()["id"])


async def test_upload_is_stored_encrypted_and_served_decrypted(
    client: httpx.AsyncClient, queue: FileQueue, settings: Settings, audio_dir: Path
) -> None:
    original = (audio_dir / "tone.wav").read_bytes()
    job_id = await _upload(client, audio_dir / "tone.wav")
    job = (await client.get(f"/jobs/{job_id}")).json()
    assert job["audio"]["size_bytes"] == len(original)  # plaintext size, not ciphertext
    stored = queue.audio_path(job_id).read_bytes()
    assert stored.startswith(MAGIC)
    assert original[1000:1064] not in stored
    assert list(queue.staging_dir().iterdir()) == []

    full = await client.get(f"/jobs/{job_id}/audio")
    assert full.status_code == 200
    assert full.content == original
    assert int(full.headers["content-length"]) == len(original)
    assert full.headers["accept-ranges"] == "bytes"


@pytest.mark.parametrize(
    ("spec", "start", "end"),
    [
        ("bytes=0-99", 0, 100),
        (f"bytes={CHUNK - 10}-{CHUNK + 9}", CHUNK - 10, CHUNK + 10),  # across a chunk boundary
        (f"bytes={CHUNK}-{3 * CHUNK + 1}", CHUNK, 3 * CHUNK + 2),  # spans three chunks
        ("bytes=-500", -500, None),  # the last 500 bytes
        (f"bytes={5 * CHUNK + 3}-", 5 * CHUNK + 3, None),  # to the end
    ],
)
async def test_range_requests_on_encrypted_audio(
    client: httpx.AsyncClient,
    audio_dir: Path,
    spec: str,
    start: int,
    end: int | None,
) -> None:
    original = (audio_dir / "tone.wav").read_bytes()
    assert len(original) > 6 * CHUNK
    job_id = await _upload(client, audio_dir / "tone.wav")
    response = await client.get(f"/jobs/{job_id}/audio", headers={"Range": spec})
    assert response.status_code == 206, response.text
    expected = original[start:end]
    assert response.content == expected
    first = start if start >= 0 else len(original) + start
    assert response.headers["content-range"] == (
        f"bytes {first}-{first + len(expected) - 1}/{len(original)}"
    )


async def test_multiple_ranges_and_unsatisfiable_range(
    client: httpx.AsyncClient, audio_dir: Path
) -> None:
    original = (audio_dir / "tone.wav").read_bytes()
    job_id = await _upload(client, audio_dir / "tone.wav")
    multi = await client.get(
        f"/jobs/{job_id}/audio", headers={"Range": f"bytes=0-9,{CHUNK - 2}-{CHUNK + 1}"}
    )
    assert multi.status_code == 206
    assert multi.headers["content-type"].startswith("multipart/byteranges")
    assert original[:10] in multi.content
    assert original[CHUNK - 2 : CHUNK + 2] in multi.content
    beyond = await client.get(
        f"/jobs/{job_id}/audio", headers={"Range": f"bytes={len(original) + 10}-"}
    )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(original)}"


async def test_plaintext_audio_and_result_from_older_versions_still_serve(
    client: httpx.AsyncClient, queue: FileQueue, audio_dir: Path
) -> None:
    original = (audio_dir / "tone.wav").read_bytes()
    job_id = await _upload(client, audio_dir / "tone.wav")
    queue.audio_path(job_id).write_bytes(original)  # as stored before encryption at rest
    full = await client.get(f"/jobs/{job_id}/audio")
    assert full.content == original
    part = await client.get(f"/jobs/{job_id}/audio", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == original[100:200]


async def test_tampered_audio_is_not_served(
    client: httpx.AsyncClient, queue: FileQueue, audio_dir: Path
) -> None:
    job_id = await _upload(client, audio_dir / "tone.wav")
    path = queue.audio_path(job_id)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01  # the last chunk: checked when the file is opened
    path.write_bytes(bytes(data))
    response = await client.get(f"/jobs/{job_id}/audio")
    assert response.status_code == 500
    assert response.json()["error"] == "stored_data_corrupt"
    assert "failed authentication" in response.json()["detail"]
    assert str(path) not in response.text


async def test_voice_samples_are_staged_encrypted_and_refused_when_empty(
    client: httpx.AsyncClient, settings: Settings, audio_dir: Path
) -> None:
    response = await client.post(
        "/voices",
        data={"name": "A"},
        files={"file": ("zero.wav", b"", "audio/wav")},
    )
    assert response.status_code == 422, response.text
    assert "empty" in response.json()["detail"]


# --------------------------------------------------------------------------- end to end

SHARED = Path(
    os.environ.get(
        "CALLANNOTATE_SHARED_DATA", Path(__file__).resolve().parents[2] / ".." / "shared" / "data"
    )
)
JFK = SHARED / "asr" / "en" / "jfk" / "jfk.flac"
RUN = 48  # bytes: a run this long from the audio anywhere on disk means plaintext leaked


def _runs(data: bytes, count: int = 40) -> list[bytes]:
    """``count`` non-silent runs of :data:`RUN` bytes spread over ``data``."""
    runs = []
    for i in range(count):
        start = (len(data) - RUN) * (i + 1) // (count + 1)
        run = data[start : start + RUN]
        if len(set(run)) > 8:  # skip silence and padding: those bytes occur anywhere
            runs.append(run)
    assert len(runs) >= count // 2
    return runs


def _pcm_forms(path: Path) -> list[bytes]:
    """The recording decoded the ways the service and a leak could hold it."""
    from callannotate.pipeline.audio.decode import decode

    forms = []
    for rate in (16000, None):
        samples = decode(path, sample_rate=rate).samples
        forms.append((np.clip(samples.T, -1, 1) * 32767.0).astype("<i2").tobytes())
        forms.append(samples.T.astype("<f4").tobytes())
    return forms


@pytest.mark.models
@pytest.mark.integration
@pytest.mark.skipif(not JFK.is_file(), reason=f"shared JFK clip not found at {JFK}")
def test_no_plaintext_audio_anywhere_under_the_data_folder(tmp_path: Path) -> None:
    """Upload a real recording as WAV (so the file bytes *are* PCM) and as FLAC, let the
    embedded workers run the full pipeline, then look for the audio in every file on disk."""
    from callannotate.pipeline.audio.decode import decode

    wav = tmp_path / "call.wav"
    buffer = decode(JFK, sample_rate=16000)
    import soundfile as sf

    sf.write(wav, buffer.samples[0], 16000, subtype="PCM_16")
    flac = tmp_path / "call.flac"
    shutil.copyfile(JFK, flac)

    settings = Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=True),
        workers=WorkerSettings(concurrency=1, preload_models=False),
    )
    app: FastAPI = create_app(settings)
    job_ids = []
    with TestClient(app) as client:
        for path in (wav, flac):
            with path.open("rb") as fh:
                response = client.post("/jobs", files={"file": (path.name, fh, "audio/wav")})
            assert response.status_code == 202, response.text
            job_ids.append(response.json()["id"])
        deadline = time.monotonic() + 1800
        states: list[str] = []
        while time.monotonic() < deadline:
            states = [client.get(f"/jobs/{j}").json()["state"] for j in job_ids]
            if all(s in ("completed", "failed") for s in states):
                break
            time.sleep(0.5)
        assert states == ["completed", "completed"], [
            client.get(f"/jobs/{j}").json().get("error") for j in job_ids
        ]
        result = client.get(f"/jobs/{job_ids[0]}/result").json()
        assert "country" in " ".join(w["text"] for w in result["words"]).lower()
        served = client.get(f"/jobs/{job_ids[0]}/audio")
        assert served.content == wav.read_bytes()

    needles = _runs(wav.read_bytes()[44:]) + _runs(flac.read_bytes())
    for form in _pcm_forms(wav) + _pcm_forms(flac):
        needles += _runs(form)
    transcript = b"ask not what your country"
    scanned = 0
    for path in sorted(settings.data_dir.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        scanned += 1
        leaks = [n for n in needles if n in data]
        assert not leaks, f"{path.relative_to(settings.data_dir)} holds plaintext audio"
        if path.name in ("result.json",) or path.suffix in (".wav", ".flac"):
            assert data.startswith(MAGIC), path
            assert transcript not in data.lower()
    assert scanned >= 4  # two audio files, two results at least
    assert (
        vault_for(settings).read_bytes(next(settings.data_dir.rglob("audio.wav")))
        == wav.read_bytes()
    )
