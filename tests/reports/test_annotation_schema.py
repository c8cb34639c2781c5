"""The published JSON Schema in docs/ is generated from the model and kept up to date."""

from __future__ import annotations

import json

from callannotate.pipeline.types import SCHEMA_VERSION, Annotation
from callannotate.reports.schema import DEFAULT_PATH, annotation_json_schema, main, schema_text


def test_published_schema_is_up_to_date() -> None:
    assert DEFAULT_PATH.is_file(), "run scripts/gen_annotation_schema.py"
    assert DEFAULT_PATH.read_text(encoding="utf-8") == schema_text(), (
        "docs/annotation.schema.json is stale: run scripts/gen_annotation_schema.py"
    )
    assert main(["--check"]) == 0


def test_schema_describes_the_annotation(ru_annotation: Annotation) -> None:
    schema = annotation_json_schema()
    assert schema["$schema"].endswith("2020-12/schema")
    assert SCHEMA_VERSION in schema["$id"]
    assert {"recording", "words", "utterances", "statistics"} <= set(schema["properties"])
    assert schema["required"] == ["recording"]
    doc = json.loads(ru_annotation.model_dump_json())
    assert set(doc) <= set(schema["properties"])


def test_check_fails_on_stale_file(tmp_path: object) -> None:
    from pathlib import Path

    path = Path(str(tmp_path)) / "schema.json"
    path.write_text("{}", encoding="utf-8")
    assert main(["--check", "--path", str(path)]) == 1
    assert main(["--write", "--path", str(path)]) == 0
    assert main(["--check", "--path", str(path)]) == 0
