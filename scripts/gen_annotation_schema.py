"""Regenerate docs/annotation.schema.json from the Annotation model (``--check`` to verify)."""

from __future__ import annotations

import sys

from callannotate.reports.schema import main

if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:] or ["--write"]))
