"""The report viewer in a real headless Chromium against a real uvicorn server.

Needs Debian's ``chromium`` (``/usr/bin/chromium``) and the ``playwright`` Python package
(only its driver is used; it launches the system Chromium, nothing is downloaded). Skips
when either is missing, except on CI (``CI=true``) where that is a failure.

Set ``CALLANNOTATE_SAVE_SCREENSHOT=1`` to refresh ``docs/report-viewer.png``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
import wave
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from reports_sample import CALL_WAV, callsample_annotation, completed_job, russian_annotation

from callannotate.config import ApiSettings, Settings
from callannotate.jobs.filequeue import FileQueue
from local_servers import free_port

pytestmark = pytest.mark.integration

CHROMIUM = Path(os.environ.get("CALLANNOTATE_CHROMIUM", "/usr/bin/chromium"))
DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "report-viewer.png"
VIEWPORT = {"width": 1280, "height": 900}
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


def _require_browser() -> None:
    reason = None
    if not CHROMIUM.is_file():
        reason = f"{CHROMIUM} not found (apt-get install chromium)"
    else:
        try:
            import playwright.sync_api  # noqa: F401
        except ImportError:
            reason = "the playwright Python package is not installed"
    if reason:
        if os.environ.get("CI") == "true":
            pytest.fail(f"browser test cannot run on CI: {reason}")
        pytest.skip(reason)


def _tone_wav(path: Path, seconds: float) -> Path:
    rate = 16000
    t = np.arange(int(rate * seconds)) / rate
    data = (0.2 * np.sin(2 * np.pi * 220 * t) * 32767).astype(np.int16)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(data.tobytes())
    return path


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
    """A uvicorn server on a data folder holding one completed job: (base url, job id)."""
    _require_browser()
    root = tmp_path_factory.mktemp("viewer")
    settings = Settings(data_dir=root / "data", api=ApiSettings(embedded_workers=False))
    queue = FileQueue(settings.queue_dir, settings.queue)
    if CALL_WAV.is_file():  # a real call: reference turns + words, real audio
        annotation, audio = callsample_annotation(), CALL_WAV
    else:
        annotation, audio = russian_annotation(), _tone_wav(root / "tone.wav", 30.0)
    job_id = completed_job(queue, annotation, audio, stored_as="call.wav")
    port = free_port()
    env = {
        **os.environ,
        "CALLANNOTATE_DATA_DIR": str(settings.data_dir),
        "CALLANNOTATE_API__EMBEDDED_WORKERS": "false",
    }
    log = (root / "server.log").open("wb")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "uvicorn",
            "callannotate.api.app:create_app",
            "--factory",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--log-level",
            "warning",
        ],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError((root / "server.log").read_text(errors="replace"))
            time.sleep(0.2)
        yield base, job_id
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_viewer_in_chromium(server: tuple[str, str], tmp_path: Path) -> None:
    from PIL import Image
    from playwright.sync_api import sync_playwright

    base, job_id = server
    errors: list[str] = []
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            # the page forbids eval (CSP); Playwright's polling helpers need it
            page = browser.new_page(viewport=VIEWPORT, bypass_csp=True)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            page.on(
                "console",
                lambda msg: errors.append(msg.text) if msg.type == "error" else None,
            )
            response = page.goto(f"{base}/jobs/{job_id}/report")
            assert response is not None and response.status == 200
            page.wait_for_function(
                "document.getElementById('player').readyState >= 1", timeout=15000
            )
            duration = page.evaluate("document.getElementById('player').duration")
            assert duration > 1

            # clicking a word seeks the audio to the word's start and highlights it
            words = page.locator("#transcript .w")
            count = words.count()
            assert count > 20
            target = words.nth(count // 2)
            start = float(target.get_attribute("data-s") or "nan")
            target.click()
            page.wait_for_function(
                f"Math.abs(document.getElementById('player').currentTime - {start}) < 1.0",
                timeout=5000,
            )
            assert "cur" in (target.get_attribute("class") or "")
            assert page.locator("#transcript .w.cur").count() == 1

            # while playing, the highlight follows the audio
            page.evaluate("document.getElementById('player').play()")
            page.wait_for_function(
                f"document.getElementById('player').currentTime > {start} + 1.0", timeout=8000
            )
            page.evaluate("document.getElementById('player').pause()")
            now = page.evaluate("document.getElementById('player').currentTime")
            expected = page.evaluate(f"window.callannotateViewer.wordAt({now})")
            page.wait_for_timeout(300)
            current = page.evaluate("window.callannotateViewer.currentWord()")
            assert current == expected
            assert page.locator("#playhead").get_attribute("visibility") == "visible"

            # clicking the speaker timeline seeks too: a quarter into the plot area
            page.evaluate("window.scrollTo(0, 0)")
            timeline = page.locator("svg.timeline")
            box = timeline.bounding_box()
            assert box is not None
            scale = box["width"] / 1000  # the SVG's viewBox is 1000 units wide
            left = float(timeline.get_attribute("data-left") or "nan") * scale
            plot = float(timeline.get_attribute("data-plot") or "nan") * scale
            timeline.click(position={"x": left + plot * 0.25, "y": 10})
            page.evaluate("document.getElementById('player').pause()")
            t = page.evaluate("document.getElementById('player').currentTime")
            svg_duration = float(
                page.locator("svg.timeline").get_attribute("data-duration") or "nan"
            )
            assert abs(t - 0.25 * svg_duration) < 1.5

            # screenshot of the top of the page
            page.evaluate(f"document.getElementById('player').currentTime = {start}")
            page.evaluate("window.scrollTo(0, 0)")
            shot = tmp_path / "viewer.png"
            page.screenshot(path=str(shot))
            if os.environ.get("CALLANNOTATE_SAVE_SCREENSHOT"):
                DOCS_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(DOCS_SCREENSHOT), full_page=True)
        finally:
            browser.close()

    assert errors == []
    with Image.open(shot) as img:
        assert img.size == (VIEWPORT["width"], VIEWPORT["height"])
        rgb = np.asarray(img.convert("RGB"), dtype=np.float32)
    assert rgb.std() > 20  # not blank
    assert len(np.unique(rgb.reshape(-1, 3), axis=0)) > 100  # text, colours, timeline
    # the speaker colours of the timeline are on screen
    assert np.any(np.all(np.abs(rgb - np.array([31, 119, 180])) < 4, axis=2))
