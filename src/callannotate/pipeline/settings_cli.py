"""``callannotate config check FILE`` (also ``python -m callannotate.config --check FILE``).

Validates a models file the way the server reads it and prints every resolved setting
(defaults included) as YAML or JSON. Exit codes: 0 valid, 2 invalid (the error names the
file, the section and the key), 1 valid but with ``--files`` a model file is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

import yaml

from callannotate.errors import ConfigError
from callannotate.pipeline.settings import (
    ModelSource,
    ModelsSettings,
    StepSettings,
    load_models_settings,
)


def _dump(section: StepSettings) -> dict[str, Any]:
    """All values of ``section``; a model source shows the package file it resolves to."""
    data: dict[str, Any] = section.model_dump(mode="json")
    if isinstance(section, ModelSource) and section.path is None:
        f = section.packaged_file()
        data.update(package=f.package, file=f.file, sha256=f.sha256, pip=f.requirement)
    for name in type(section).model_fields:
        value = getattr(section, name)
        if isinstance(value, StepSettings):
            data[name] = _dump(value)
    return data


def resolved(models: ModelsSettings) -> dict[str, Any]:
    """Every configured step with all its values (JSON types), model files resolved."""
    return {step: _dump(models.section(step)) for step in models.steps()}


def check_file(path: Path, *, as_json: bool, files: bool, out: TextIO, err: TextIO) -> int:
    try:
        models = load_models_settings(path)
    except ConfigError as exc:
        print(f"invalid: {exc.detail}", file=err)
        return 2
    data: dict[str, Any] = resolved(models)
    missing = False
    if files:
        from callannotate.pipeline.readiness import check_configured_models

        checks = check_configured_models(models)
        data = {"steps": data, "model_files": checks}
        missing = any(v != "ok" for v in checks.values())
    if as_json:
        print(json.dumps(data, indent=2, ensure_ascii=False), file=out)
    else:
        print(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), end="", file=out)
    return 1 if missing else 0


def _cmd_check(args: argparse.Namespace) -> int:
    return check_file(
        Path(args.file), as_json=args.json, files=args.files, out=sys.stdout, err=sys.stderr
    )


def _add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON instead of YAML")
    parser.add_argument(
        "--files",
        action="store_true",
        help="also check that every model file the steps load is installed (sha256)",
    )


def add_parser(subparsers: Any) -> None:
    """Register ``config check FILE``."""
    config = subparsers.add_parser("config", help="check a models file (config/models.yaml)")
    sub = config.add_subparsers(dest="config_command", metavar="{check}")
    sub.required = True
    check = sub.add_parser("check", help="validate FILE and print the resolved settings")
    check.add_argument("file", help="models file, e.g. config/models.yaml")
    _add_check_arguments(check)
    check.set_defaults(func=_cmd_check)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m callannotate.config --check FILE``."""
    parser = argparse.ArgumentParser(
        prog="python -m callannotate.config", description="Check a models file."
    )
    parser.add_argument("--check", metavar="FILE", required=True, help="models file to check")
    _add_check_arguments(parser)
    args = parser.parse_args(argv)
    return check_file(
        Path(args.check), as_json=args.json, files=args.files, out=sys.stdout, err=sys.stderr
    )
