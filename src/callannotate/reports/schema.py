"""The published JSON Schema of :class:`~callannotate.pipeline.types.Annotation`.

``python -m callannotate.reports.schema --write`` (or ``scripts/gen_annotation_schema.py``)
regenerates ``docs/annotation.schema.json``; ``--check`` exits 1 when it is out of date.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from callannotate.pipeline.types import SCHEMA_VERSION, Annotation

SCHEMA_ID = f"https://callannotate.local/schemas/annotation-{SCHEMA_VERSION}.json"
DEFAULT_PATH = Path(__file__).resolve().parents[3] / "docs" / "annotation.schema.json"


def annotation_json_schema() -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of the annotation document, as pydantic describes it."""
    schema = Annotation.model_json_schema(mode="serialization")
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"CallAnnotate annotation {SCHEMA_VERSION}",
        **schema,
    }


def schema_text() -> str:
    return json.dumps(annotation_json_schema(), indent=2, ensure_ascii=False, sort_keys=True) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--path", type=Path, default=DEFAULT_PATH)
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--write", action="store_true", help="write the schema file")
    group.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    text = schema_text()
    if args.write:
        args.path.parent.mkdir(parents=True, exist_ok=True)
        args.path.write_text(text, encoding="utf-8")
        print(f"wrote {args.path}")
        return 0
    if args.check:
        current = args.path.read_text(encoding="utf-8") if args.path.is_file() else ""
        if current != text:
            print(
                f"{args.path} is out of date: run scripts/gen_annotation_schema.py", file=sys.stderr
            )
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
