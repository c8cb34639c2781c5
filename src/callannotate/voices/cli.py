"""``callannotate voices enroll NAME FILE... | list | identify FILE`` (the server's store).

The store is ``<data_dir>/voices`` of the same settings the server uses
(``CALLANNOTATE_DATA_DIR`` or ``--data-dir``), so voices enrolled here are recognised in
jobs and vice versa.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from callannotate.cli import int_in_range
from callannotate.config import Settings
from callannotate.errors import CallAnnotateError


def _settings(args: argparse.Namespace) -> Settings:
    settings = Settings()
    if getattr(args, "data_dir", None):
        settings = settings.model_copy(update={"data_dir": Path(args.data_dir)})
    return settings


def _service(settings: Settings) -> Any:
    from callannotate.voices.routes import voice_service

    return voice_service(settings)


def _fail(exc: CallAnnotateError) -> int:
    print(f"callannotate: error: {exc.detail}", file=sys.stderr)
    return 2


def _check_contact(settings: Settings, contact_id: str) -> None:
    from callannotate.contacts.routes import build_contacts_service
    from callannotate.errors import NotFound, Unprocessable
    from callannotate.voices.schemas import LEGACY_OWNER

    service = build_contacts_service(settings)
    try:
        service.get(LEGACY_OWNER, contact_id.strip())
    except NotFound as exc:
        raise Unprocessable(f"contact_id {contact_id!r} is not one of your contacts") from exc
    finally:
        service.db.dispose()


def _cmd_enroll(args: argparse.Namespace) -> int:
    settings = _settings(args)
    files = [Path(f) for f in args.files]
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        print(f"callannotate: error: no such file: {', '.join(missing)}", file=sys.stderr)
        return 2
    try:
        from callannotate.security.atrest import vault_for
        from callannotate.voices.schemas import LEGACY_OWNER
        from callannotate.voices.service import voice_name
        from callannotate.voices.store import VoiceStore

        name = voice_name(args.name)  # before any model is loaded, as the API checks
        if not args.voice_id:
            store = VoiceStore(settings.voices_dir, vault_for(settings))
            store.check_name_free(LEGACY_OWNER, name)
        if args.contact_id:  # one of the local user's contacts (as the API checks)
            _check_contact(settings, args.contact_id)
        service = _service(settings)
        samples = service.samples_from_files([(f, f.name) for f in files])
        if args.voice_id:
            voice = service.add_samples(args.voice_id, samples)
        else:
            voice = service.enroll(name, samples, args.contact_id)
    except CallAnnotateError as exc:
        return _fail(exc)
    info = voice.info()
    print(
        f"enrolled {info.name} ({info.id}): {len(info.samples)} sample(s), "
        f"{info.speech_duration:.1f} s of speech"
    )
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from callannotate.security.atrest import vault_for
    from callannotate.voices.store import VoiceStore

    settings = _settings(args)
    voices = VoiceStore(settings.voices_dir, vault_for(settings)).list()
    if args.json:
        print(json.dumps([v.info().model_dump(mode="json") for v in voices], indent=2))
        return 0
    if not voices:
        print("no voices enrolled")
        return 0
    for v in voices:
        info = v.info()
        contact = f"  contact={info.contact_id}" if info.contact_id else ""
        print(
            f"{info.id}  {info.name}  samples={len(info.samples)}  "
            f"speech={info.speech_duration:.1f}s{contact}"
        )
    return 0


def _cmd_identify(args: argparse.Namespace) -> int:
    from callannotate.pipeline.audio import decode as audio_io

    settings = _settings(args)
    path = Path(args.file)
    if not path.is_file():
        print(f"callannotate: error: no such file: {path}", file=sys.stderr)
        return 2
    try:
        service = _service(settings)
        buffer = audio_io.decode(path, sample_rate=audio_io.MODEL_SAMPLE_RATE, settings=settings)
        wave = buffer.mono()
        from callannotate.voices.service import check_sample, measure_sample

        check_sample(measure_sample(wave), service.params, f"{path.name}")
        result = service.identify_wave(wave, top=args.top)
    except CallAnnotateError as exc:
        return _fail(exc)
    if args.json:
        print(result.model_dump_json(indent=2))
        return 0
    if not result.candidates:
        print("no voices enrolled")
        return 1
    best = result.candidates[0]
    verdict = best.name if result.accepted else "unknown"
    print(f"{path.name}: {verdict} (threshold {result.threshold:.3f})")
    for c in result.candidates:
        print(f"  {c.score:7.3f}  {c.name}  ({c.voice_id})")
    return 0 if result.accepted else 1


def add_parser(subparsers: Any) -> None:
    """Register ``voices`` with its ``enroll``, ``list`` and ``identify`` subcommands."""
    voices = subparsers.add_parser("voices", help="enroll and recognise known voices")
    voices.add_argument("--data-dir", help="data folder holding voices/ (default: settings)")
    sub = voices.add_subparsers(dest="voices_command", metavar="{enroll,list,identify}")
    sub.required = True

    enroll = sub.add_parser("enroll", help="enroll NAME from one or more audio samples")
    enroll.add_argument("name", help="display name of the person")
    enroll.add_argument("files", nargs="+", help="audio samples (any format ffmpeg reads)")
    enroll.add_argument("--contact-id", help="address-book contact id to link")
    enroll.add_argument("--voice-id", help="add the samples to this existing voice instead")
    enroll.set_defaults(func=_cmd_enroll)

    lst = sub.add_parser("list", help="list enrolled voices")
    lst.add_argument("--json", action="store_true", help="print JSON")
    lst.set_defaults(func=_cmd_list)

    ident = sub.add_parser("identify", help="print the best matching voices for FILE")
    ident.add_argument("file", help="audio of one speaker")
    ident.add_argument(
        "--top", type=int_in_range(1, 10_000), default=3, help="candidates to print (default 3)"
    )
    ident.add_argument("--json", action="store_true", help="print JSON")
    ident.set_defaults(func=_cmd_identify)
