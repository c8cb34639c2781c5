"""scripts/coverage_summary.py on real coverage data, subprocesses included.

A throw-away project with the same ``[tool.coverage.run]`` approach as pyproject.toml (branch,
parallel, ``patch = ["subprocess"]``): a module run only in a child process must show up as
covered, and the line gate must pass or fail on the line figure alone.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "scripts" / "coverage_summary.py"

PYPROJECT = """
[tool.coverage.run]
source_pkgs = ["pkg"]
branch = true
parallel = true
patch = ["subprocess"]
"""

MAIN = """
import subprocess, sys
from pkg import top
top.pick(1)
subprocess.run([sys.executable, "-c", "from pkg.sub import child; child.run()"], check=True)
"""

TOP = """
def pick(x):
    if x > 0:
        return "positive"
    return "other"


def never():
    return 1
"""

CHILD = """
def run():
    total = 0
    for i in range(3):
        total += i
    return total
"""


def make_project(tmp_path: Path) -> Path:
    (tmp_path / "pkg" / "sub").mkdir(parents=True)
    (tmp_path / "pyproject.toml").write_text(PYPROJECT)
    (tmp_path / "main.py").write_text(MAIN)
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "top.py").write_text(TOP)
    (tmp_path / "pkg" / "sub" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "sub" / "child.py").write_text(CHILD)
    for args in (["run", "main.py"], ["combine", "-q"]):
        done = subprocess.run(
            [sys.executable, "-m", "coverage", *args],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path)},
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
    return tmp_path


def summary(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(SUMMARY), "--root", "pkg", *args],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_packages_lines_and_branches_include_the_subprocess(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    done = summary(project)
    assert done.returncode == 0, done.stderr
    rows = {line.split()[0]: line.split()[1:] for line in done.stdout.splitlines()[2:]}
    # pkg/sub/child.py ran only in the child process: 5 statements, all covered, loop branches.
    assert rows["sub"][:3] == ["5", "0", "100.0%"]
    assert rows["sub"][3:] == ["2", "0", "100.0%"]
    # pkg/top.py: `never` and the `return "other"` line missed; one of two branches taken.
    assert rows["(top)"] == ["6", "2", "66.7%", "2", "1", "50.0%"]
    assert "coverage: lines 81.8% (9/11), branches 75.0% (3/4)" in done.stdout


def test_the_gate_reads_the_line_figure(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    assert summary(project, "--fail-under-lines", "80").returncode == 0  # combined is 80.0 %
    failed = summary(project, "--fail-under-lines", "90")
    assert failed.returncode == 1
    assert "FAILED: lines 81.8% < 90% (packages below: (top))" in failed.stderr


def test_data_saved_after_the_combine_is_folded_in(tmp_path: Path) -> None:
    """A process that saves after pytest-cov combined leaves a .coverage.* file: it counts."""
    project = make_project(tmp_path)
    (project / "late.py").write_text("from pkg import top\ntop.never()\n")
    late = subprocess.run(
        [sys.executable, "-m", "coverage", "run", "late.py"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(project)},
        timeout=60,
    )
    assert late.returncode == 0, late.stderr
    assert list(project.glob(".coverage.*"))
    done = summary(project)
    assert done.returncode == 0, done.stderr
    assert "coverage: lines 90.9% (10/11), branches 75.0% (3/4)" in done.stdout
    assert not list(project.glob(".coverage.*"))


def test_a_missing_data_file_is_a_clear_error(tmp_path: Path) -> None:
    done = summary(tmp_path)
    assert done.returncode == 2
    assert "no data file .coverage (run pytest --cov first)" in done.stderr
