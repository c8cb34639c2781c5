"""The Content-Security-Policy of the pages, enforced by a real Chromium (no ``bypass_csp``).

The report viewer's own script runs (it is allowed by its hash) and a script injected into
the page does not; ``/docs`` (Swagger UI) and ``/redoc`` render from the service's own assets
under their policy. Same server and browser set-up as test_report_viewer.py.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from test_report_viewer import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, server

from callannotate.api.headers import script_hash
from callannotate.reports.html import inline_scripts

__all__ = ["server"]  # the module-scoped uvicorn fixture, shared with the viewer test

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def browser(server: tuple[str, str]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


def _until(page: Any, expression: str, timeout_s: float = 15.0) -> Any:
    """Poll ``expression`` with ``page.evaluate`` (DevTools, not subject to the page's CSP;
    Playwright's own ``wait_for_function`` needs ``eval``, which the pages forbid)."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {timeout_s}s: {expression}")
        page.wait_for_timeout(100)


def _open(browser: Any, url: str) -> tuple[Any, list[str]]:
    page = browser.new_page(viewport=VIEWPORT)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
    response = page.goto(url)
    assert response is not None and response.status == 200, url
    return page, errors


def test_report_policy_allows_exactly_the_pages_script(server: tuple[str, str]) -> None:
    base, job_id = server
    response = httpx.get(f"{base}/jobs/{job_id}/report")
    csp = response.headers["content-security-policy"]
    script_src = re.search(r"script-src ([^;]+)", csp)
    assert script_src is not None
    assert "'unsafe-inline'" not in script_src.group(1)
    served = re.findall(r"<script>(.*?)</script>", response.text, flags=re.S)
    assert served and list(served) == list(inline_scripts())
    assert script_src.group(1).split() == [script_hash(s) for s in served]


def test_report_page_works_under_its_policy(browser: Any, server: tuple[str, str]) -> None:
    base, job_id = server
    page, errors = _open(browser, f"{base}/jobs/{job_id}/report")
    try:
        assert page.evaluate("typeof window.callannotateViewer") == "object"  # script ran
        _until(page, "document.getElementById('player').readyState >= 1")  # audio loads
        words = page.locator("#transcript .w")
        target = words.nth(words.count() // 2)
        start = float(target.get_attribute("data-s") or "nan")
        target.click()
        _until(page, f"Math.abs(document.getElementById('player').currentTime - {start}) < 1")
        assert "cur" in (target.get_attribute("class") or "")
        assert errors == []

        # a script injected into the page (what an XSS would do) is refused by the CSP
        ran = page.evaluate(
            """() => { const s = document.createElement('script');
                       s.textContent = 'window.injected = true';
                       document.body.appendChild(s);
                       return window.injected === true; }"""
        )
        assert ran is False
        for _ in range(50):  # the violation reaches the console asynchronously
            if errors:
                break
            page.wait_for_timeout(100)
        assert any("Content Security Policy" in e for e in errors), errors
    finally:
        page.close()


def test_swagger_ui_renders_under_its_policy(browser: Any, server: tuple[str, str]) -> None:
    base, _ = server
    page, errors = _open(browser, f"{base}/docs")
    try:
        count = _until(page, "document.querySelectorAll('.swagger-ui .opblock').length")
        assert count > 10
        assert "CallAnnotate" in page.inner_text(".swagger-ui .info")
        assert errors == []
    finally:
        page.close()


def test_redoc_renders_under_its_policy(browser: Any, server: tuple[str, str]) -> None:
    base, _ = server
    page, errors = _open(browser, f"{base}/redoc")
    try:
        _until(page, "document.body.innerText.includes('Report viewer page')", timeout_s=30)
        # the footer logo is rendered after mounting: wait for it so a blocked load shows up
        _until(page, "document.querySelector('img[alt=\"redocly logo\"]')?.complete", timeout_s=10)
        page.wait_for_timeout(300)  # a violation reaches the console asynchronously
        assert errors == []
    finally:
        page.close()
