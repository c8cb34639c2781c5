"""``WS /stream``: protocol errors (no model) and a real tiny.en stream of jfk.flac."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from callannotate.jobs.filequeue import FileQueue
from callannotate.pipeline.audio.decode import decode


def _shared_data() -> Path:
    env = os.environ.get("CALLANNOTATE_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / ".." / "shared" / "data"


JFK = _shared_data() / "asr" / "en" / "jfk" / "jfk.flac"


@pytest.fixture
def live(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as client:
        yield client


def test_audio_before_config_is_refused(live: TestClient) -> None:
    with live.websocket_connect("/stream") as ws:
        ws.send_bytes(b"\x00\x00" * 100)
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["error"] == "bad_request"
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1008


@pytest.mark.parametrize(
    "config",
    [
        {"type": "config", "format": "mp3"},
        {"type": "config", "format": "pcm_s16le", "sample_rate": 8000},
        {"type": "config", "language": "klingon!"},
        {"type": "config", "unknown": 1},
    ],
)
def test_bad_config_is_refused(live: TestClient, config: dict[str, Any]) -> None:
    with live.websocket_connect("/stream") as ws:
        ws.send_json(config)
        msg = ws.receive_json()
        assert msg["type"] == "error"
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1008  # a bad config, not a server error


@pytest.mark.parametrize(
    "config",
    [
        {"type": "config", "language": "xx"},
        {"type": "config", "create_job": True, "options": {"language": "rus"}},
    ],
)
def test_a_language_whisper_does_not_know_is_refused(
    live: TestClient, config: dict[str, Any]
) -> None:
    # Code-shaped (two or three letters) but no Whisper language: refused before any audio,
    # as a bad config (1008), not as a server error (1011: "reconnect with backoff").
    with live.websocket_connect("/stream") as ws:
        ws.send_json(config)
        msg = ws.receive_json()
        assert msg["type"] == "error" and msg["error"] == "bad_request", msg
        assert "language" in msg["detail"] and "Whisper" in msg["detail"]
        with pytest.raises(WebSocketDisconnect) as info:
            ws.receive_json()
        assert info.value.code == 1008


def _norm(text: str) -> str:
    return " ".join(re.sub(r"[^\w\s']", " ", text.lower()).split())


@pytest.mark.models
@pytest.mark.skipif(not JFK.is_file(), reason=f"{JFK} not found (set CALLANNOTATE_SHARED_DATA)")
def test_pcm_stream_of_jfk_commits_words_and_becomes_a_job(
    live: TestClient, queue: FileQueue
) -> None:
    pcm = (np.clip(decode(JFK).mono(), -1, 1) * 32767).astype("<i2").tobytes()
    messages: list[dict[str, Any]] = []
    with live.websocket_connect("/stream") as ws:
        ws.send_json(
            {"type": "config", "format": "pcm_s16le", "language": "en", "create_job": True}
        )
        ready = ws.receive_json()
        assert ready["type"] == "ready" and ready["sample_rate"] == 16000
        assert ready["model"] == "tiny.en"  # the model's name, not its folder's ("model")
        step = 16000 * 2  # 1 s frames; the server decodes as fast as it can
        for i in range(0, len(pcm), step):
            ws.send_bytes(pcm[i : i + step])
        ws.send_json({"type": "end"})
        while True:
            msg = ws.receive_json()
            messages.append(msg)
            if msg["type"] in ("final", "error"):
                break
    final = messages[-1]
    assert final["type"] == "final", final
    committed = [w for m in messages if m["type"] == "committed" for w in m["words"]]
    assert committed, "no words were committed"
    assert [w["text"] for w in committed] == [w["text"] for w in final["words"]]
    starts = [w["start"] for w in committed]
    assert starts == sorted(starts) and starts[0] >= 0 and committed[-1]["end"] <= 11.5
    text = _norm(final["text"])
    for phrase in ("fellow americans", "your country can do for you", "for your country"):
        assert phrase in text, text
    assert final["duration"] == pytest.approx(11.0, abs=0.1)
    job = queue.get(final["job_id"])
    assert job.audio.duration == pytest.approx(11.0, abs=0.1)
    assert job.options.language == "en"
