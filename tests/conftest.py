"""Root fixtures shared by every test folder.

Authentication is on by default (``auth.enabled``). Tests written before it, or about
something else, run with it off: this file sets ``CALLANNOTATE_AUTH__ENABLED=false`` for every
test unless the test opts in with ``@pytest.mark.auth`` (or the ``auth_enabled`` fixture).
Server subprocesses started by tests inherit the environment, so they run with auth off too.

Settings built with an explicit ``auth=AuthSettings(...)`` are not affected by the variable
(constructor arguments win over the environment): such a test has authentication on unless
it passes ``enabled=False`` itself.
"""

from __future__ import annotations

import os

import pytest

AUTH_ENV = "CALLANNOTATE_AUTH__ENABLED"


def pytest_configure(config: pytest.Config) -> None:
    # Process-wide as well, for what runs outside a test function: collection-time code and
    # module- or session-scoped fixtures (servers started once per module).
    os.environ[AUTH_ENV] = "false"
    config.addinivalue_line(
        "markers", "auth: run with authentication as configured (default on), not forced off"
    )


@pytest.fixture(autouse=True)
def _auth_off_unless_asked(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> None:
    if request.node.get_closest_marker("auth") or "auth_enabled" in request.fixturenames:
        monkeypatch.delenv(AUTH_ENV, raising=False)
    else:
        monkeypatch.setenv(AUTH_ENV, "false")


@pytest.fixture
def auth_enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """Authentication as it is by default (on): the variable is removed for this test."""
    monkeypatch.delenv(AUTH_ENV, raising=False)
