"""Per-package coverage summary of a combined coverage data file, gated on the line figure.

coverage's own ``--fail-under`` gates on lines and branches together when branch coverage is
on; the project's target is 90 % of *lines* of ``src/`` (branches are reported beside it), so
this script computes both figures per package and fails when the total line figure is below
``--fail-under-lines``. Used by scripts/test.sh after ``pytest --cov``.

    python scripts/coverage_summary.py [--data-file .coverage] [--fail-under-lines 90]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import coverage


@dataclass
class Figures:
    statements: int = 0
    covered_lines: int = 0
    branches: int = 0
    covered_branches: int = 0

    def add(self, summary: dict[str, int]) -> None:
        self.statements += summary["num_statements"]
        self.covered_lines += summary["covered_lines"]
        self.branches += summary.get("num_branches", 0)
        self.covered_branches += summary.get("covered_branches", 0)

    @property
    def lines_pct(self) -> float:
        return 100.0 * self.covered_lines / self.statements if self.statements else 100.0

    @property
    def branches_pct(self) -> float:
        return 100.0 * self.covered_branches / self.branches if self.branches else 100.0


def package_of(path: str, root: str) -> str:
    """``src/callannotate/jobs/executors/x.py`` -> ``jobs``; a module in root -> ``(top)``."""
    parts = PurePosixPath(path.replace("\\", "/")).parts
    top = PurePosixPath(root).parts
    if tuple(parts[: len(top)]) == top:
        parts = parts[len(top) :]
    return parts[0] if len(parts) > 1 else "(top)"


def summarise(report: dict[str, object], root: str) -> tuple[dict[str, Figures], Figures]:
    files = report["files"]
    assert isinstance(files, dict)
    packages: dict[str, Figures] = {}
    total = Figures()
    for path, entry in files.items():
        summary = entry["summary"]
        packages.setdefault(package_of(path, root), Figures()).add(summary)
        total.add(summary)
    return packages, total


def render(packages: dict[str, Figures], total: Figures, root: str) -> str:
    head = f"{'package (' + root + ')':<32} {'stmts':>7} {'miss':>6} {'lines':>7}"
    head += f" {'branches':>9} {'miss':>6} {'branch':>7}"
    rows = [head, "-" * len(head)]
    for name, f in [*sorted(packages.items()), ("TOTAL", total)]:
        if name == "TOTAL":
            rows.append("-" * len(head))
        rows.append(
            f"{name:<32} {f.statements:>7} {f.statements - f.covered_lines:>6}"
            f" {f.lines_pct:>6.1f}% {f.branches:>9} {f.branches - f.covered_branches:>6}"
            f" {f.branches_pct:>6.1f}%"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-file", default=".coverage", help="combined data (.coverage)")
    parser.add_argument("--root", default="src/callannotate", help="package directory")
    parser.add_argument("--fail-under-lines", type=float, default=0.0, metavar="PCT")
    args = parser.parse_args(argv)

    if not Path(args.data_file).is_file():
        print(f"coverage: no data file {args.data_file} (run pytest --cov first)", file=sys.stderr)
        return 2
    cov = coverage.Coverage(data_file=args.data_file)
    cov.load()
    # A process the tests started may save its data after pytest-cov combined (a server that
    # was still shutting down): fold such .coverage.* files in too.
    if list(Path(args.data_file).parent.glob(Path(args.data_file).name + ".*")):
        cov.combine(keep=False)
        cov.save()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "coverage.json"
        cov.json_report(outfile=str(out))
        report = json.loads(out.read_text(encoding="utf-8"))
    packages, total = summarise(report, args.root)
    print(render(packages, total, args.root))
    print(
        f"coverage: lines {total.lines_pct:.1f}% ({total.covered_lines}/{total.statements}), "
        f"branches {total.branches_pct:.1f}% ({total.covered_branches}/{total.branches})"
    )
    if total.lines_pct < args.fail_under_lines:
        low = [n for n, f in sorted(packages.items()) if f.lines_pct < args.fail_under_lines]
        print(
            f"coverage: FAILED: lines {total.lines_pct:.1f}% < {args.fail_under_lines:g}% "
            f"(packages below: {', '.join(low)})",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
