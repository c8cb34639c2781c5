"""For the tests and benchmarks that start CallAnnotate or another server as a process.

The one definition of each for both: tests import this module as ``local_servers``
(``tests/`` is on ``sys.path`` under pytest); the benchmarks append ``tests/`` to ``sys.path``
(benchmarks/api_throughput.py).
"""

from __future__ import annotations

import socket
import sys
from pathlib import Path


def free_port() -> int:
    """A port on 127.0.0.1 that was free a moment ago (bound to port 0 and released; another
    process may take it before the caller binds it)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def callannotate_command() -> list[str]:
    """The ``callannotate`` CLI of this interpreter's environment: its console script, or
    ``python -m callannotate.cli`` where the script is not installed."""
    script = Path(sys.executable).parent / "callannotate"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "callannotate.cli"]
