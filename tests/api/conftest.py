"""Fixtures for API tests: the real app on a temporary data folder, and synthesised audio."""

from __future__ import annotations

import wave
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import httpx
import numpy as np
import pytest
from fastapi import FastAPI

from audio_encoding import encode_pcm
from callannotate.api.app import create_app
from callannotate.config import ApiSettings, Settings
from callannotate.jobs.filequeue import FileQueue

MAX_UPLOAD = 256 * 1024

# name -> (container, codec, sample rate, channels)
FORMATS: dict[str, tuple[str, str, int, int]] = {
    "tone.wav": ("wav", "pcm_s16le", 16000, 1),
    "tone.flac": ("flac", "flac", 16000, 1),
    "tone.mp3": ("mp3", "libmp3lame", 16000, 1),
    "tone.ogg": ("ogg", "libopus", 48000, 1),
    "tone.opus": ("opus", "libopus", 48000, 1),
    "tone.m4a": ("ipod", "aac", 16000, 1),
    "tone.amr": ("amr", "libopencore_amrnb", 8000, 1),
    "tone.webm": ("webm", "libopus", 48000, 1),
    "stereo.wav": ("wav", "pcm_s16le", 8000, 2),
}


def synthesise(
    path: Path, container: str, codec: str, rate: int, channels: int, seconds: float
) -> Path:
    """Encode a 440/660 Hz tone (one tone per channel) with PyAV."""
    t = np.arange(int(rate * seconds)) / rate
    tones = [0.3 * np.sin(2 * np.pi * f * t) for f in (440.0, 660.0)[:channels]]
    data = (np.stack(tones) * 32767).astype(np.int16)
    return encode_pcm(path, container, codec, rate, np.ascontiguousarray(data.T))


@pytest.fixture(scope="session")
def audio_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("audio")
    for name, (container, codec, rate, channels) in FORMATS.items():
        synthesise(folder / name, container, codec, rate, channels, 1.0)
    # Bad inputs.
    (folder / "text.wav").write_text("this is not audio, just text renamed to .wav\n" * 20)
    (folder / "zero.wav").write_bytes(b"")
    with wave.open(str(folder / "empty.wav"), "wb") as w:  # a valid header, zero samples
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
    m4a = (folder / "tone.m4a").read_bytes()
    (folder / "truncated.m4a").write_bytes(m4a[: len(m4a) // 2])  # moov atom is lost
    wav = (folder / "tone.wav").read_bytes()
    (folder / "truncated.wav").write_bytes(wav[:30])  # cut inside the header
    synthesise(folder / "big.wav", "wav", "pcm_s16le", 16000, 1, 10.0)  # ~320 KB > MAX_UPLOAD
    return folder


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        api=ApiSettings(embedded_workers=False, max_upload_bytes=MAX_UPLOAD),
    )


@pytest.fixture
def app(settings: Settings) -> FastAPI:
    return create_app(settings)


@pytest.fixture
def queue(app: FastAPI) -> FileQueue:
    q: FileQueue = app.state.queue
    return q


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
        yield c


Uploader = Callable[..., Awaitable[httpx.Response]]


@pytest.fixture
def leftovers(settings: Settings) -> Callable[[], list[str]]:
    """Files in staging, incoming and processing (a refused upload must leave none)."""

    def scan() -> list[str]:
        root = settings.queue_dir
        found: list[str] = []
        for folder in ("staging", "incoming", "processing"):
            base = root / folder
            if base.exists():
                found += [str(p.relative_to(root)) for p in base.rglob("*")]
        return found

    return scan


@pytest.fixture
def upload(client: httpx.AsyncClient) -> Uploader:
    """POST one file to /jobs: ``await upload(path, filename=..., data={...})``."""

    async def send(
        path: Path,
        *,
        filename: str | None = None,
        data: dict[str, str] | None = None,
        content_type: str = "application/octet-stream",
    ) -> httpx.Response:
        with open(path, "rb") as fh:
            name = filename if filename is not None else path.name
            return await client.post(
                "/jobs", files={"file": (name, fh, content_type)}, data=data or {}
            )

    return send
