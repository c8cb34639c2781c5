"""``callannotate models prepare``: fill a model cache with every converted model file.

Every step configured in the models file is loaded the way a worker loads it, which exports
the torch checkpoints to ONNX and joins the split Whisper model into the cache; the models the
service loads only on demand (the streaming Whisper models, GE2E for voice recognition) are
prepared too. Converting needs torch (the dev install has it). The container image ships a
cache prepared this way, read-only and without torch (docs/deployment.md, "Container images").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from callannotate.config import Settings
from callannotate.errors import CallAnnotateError

EXIT_OK = 0
EXIT_FAILED = 2


def _prepare_streaming(settings: Settings, models: Any) -> list[str]:
    """Join/verify the Whisper models of live streams (loaded on the first stream)."""
    from callannotate.pipeline.asr.whisper_models import whisper_model_dir

    cfg = models.transcription
    if cfg is None:
        return []
    stream = cfg.streaming
    wanted = (
        (stream.model or cfg.model, stream.path),
        (stream.multilingual_model or cfg.model, stream.multilingual_path),
    )
    for name, path in wanted:
        whisper_model_dir(name, settings.model_cache, path=path)
    return ["transcription.streaming"]


def _prepare_ge2e(settings: Settings, models: Any) -> list[str]:
    """Export GE2E (loaded on the first enrollment or identification) when it is enabled."""
    if models.recognition is None:
        return []
    from callannotate.voices.service import shared_ge2e

    ge2e = shared_ge2e(models.recognition, settings.model_cache, settings.workers.threads)
    if ge2e is None:
        return []
    ge2e.ensure_loaded()
    return ["recognition.ge2e"]


def prepare(settings: Settings) -> list[str]:
    """Load every configured model into ``settings.model_cache``; the places prepared."""
    from callannotate.pipeline.registry import models_settings, preload, release_all

    models = models_settings(settings)
    steps = models.steps()
    try:
        preload(settings, steps)
        done = list(steps)
        done += _prepare_streaming(settings, models)
        done += _prepare_ge2e(settings, models)
    finally:
        release_all()
    return done


def cache_files(cache: Path) -> dict[str, int]:
    """Every file in ``cache`` (relative path -> bytes), temporary files excluded."""
    return {
        str(p.relative_to(cache)): p.stat().st_size
        for p in sorted(cache.rglob("*"))
        if p.is_file() and not p.name.startswith(".")
    }


def _cmd_prepare(args: argparse.Namespace) -> int:
    from callannotate.observability.logging import configure_logging

    settings = Settings()
    if args.cache_dir is not None:
        settings = settings.model_copy(update={"model_cache_dir": Path(args.cache_dir).resolve()})
    configure_logging(settings.log.model_copy(update={"level": "WARNING"}))
    try:
        steps = prepare(settings)
    except CallAnnotateError as exc:
        print(f"callannotate: error: {exc.code}: {exc.detail}", file=sys.stderr)
        return EXIT_FAILED
    except ImportError as exc:  # converting a checkpoint needs torch
        print(
            f"callannotate: error: cannot convert the models here ({exc}); "
            "`models prepare` runs where torch is installed (scripts/setup.sh)",
            file=sys.stderr,
        )
        return EXIT_FAILED
    files = cache_files(settings.model_cache) if settings.model_cache.is_dir() else {}
    if args.json:
        report = {"cache_dir": str(settings.model_cache), "steps": steps, "files": files}
        print(json.dumps(report, indent=2))
        return EXIT_OK
    print(f"prepared {', '.join(steps)} in {settings.model_cache}")
    for name, size in files.items():
        print(f"  {size / 1e6:9.1f} MB  {name}")
    return EXIT_OK


def add_parser(subparsers: Any) -> None:
    """Register ``models prepare``."""
    models = subparsers.add_parser("models", help="prepare the model cache (converted models)")
    sub = models.add_subparsers(dest="models_command", metavar="{prepare}")
    sub.required = True
    prep = sub.add_parser(
        "prepare",
        help="load every configured model once, so its converted files are in the cache "
        "(ONNX exports need torch); lists the cache",
    )
    prep.add_argument(
        "--cache-dir",
        help="model cache to fill (default: CALLANNOTATE_MODEL_CACHE_DIR or "
        "$XDG_CACHE_HOME/callannotate/models)",
    )
    prep.add_argument("--json", action="store_true", help="print the result as JSON")
    prep.set_defaults(func=_cmd_prepare)
