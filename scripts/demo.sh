#!/usr/bin/env bash
# Quick start, works on a bare clone: set everything up (scripts/setup.sh), make a short
# two-voice support call offline (scripts/make_demo_call.sh -> out/demo_call.wav), annotate
# it into out/ and print a one-screen summary with the report files.
#   bash scripts/demo.sh [FILE...]        annotate your own recordings instead
# Set CALLANNOTATE_SKIP_SETUP=1 to skip the install step on an already set-up checkout, and
# CALLANNOTATE_DEMO_OUT=DIR to write somewhere else than out/.
set -euo pipefail
# Paths given by the caller are relative to where they ran the script from.
FILES=()
for f in "$@"; do
  [[ -f "$f" ]] || { echo "demo: $f not found" >&2; exit 2; }
  FILES+=("$(realpath "$f")")
done
[[ -z "${CALLANNOTATE_DEMO_OUT:-}" ]] || CALLANNOTATE_DEMO_OUT=$(realpath -m "$CALLANNOTATE_DEMO_OUT")
cd "$(dirname "$0")/.."

if [[ "${CALLANNOTATE_SKIP_SETUP:-0}" != "1" || ! -x .venv/bin/callannotate ]]; then
  # The demo needs no browser; the tests do (scripts/setup.sh installs it by default).
  CALLANNOTATE_BROWSER_TESTS="${CALLANNOTATE_BROWSER_TESTS:-0}" bash scripts/setup.sh
fi

OUT=${CALLANNOTATE_DEMO_OUT:-out}
if ((${#FILES[@]} == 0)); then
  FILES=("$OUT/demo_call.wav")
  echo "demo: making a two-voice support call offline (flite voices, phone line)"
  bash scripts/make_demo_call.sh "${FILES[0]}"
fi

echo "demo: annotating ${FILES[*]} (the first run loads the models, about a minute)"
status=0
listing=$(
  .venv/bin/callannotate annotate "${FILES[@]}" --out "$OUT" --format json,rttm,srt,csv,html
) || status=$?
mapfile -t WRITTEN <<<"$listing"

# One screen: speakers, the first utterances and the files written, per recording.
.venv/bin/python - "${WRITTEN[@]}" <<'EOF'
import json
import sys
from pathlib import Path

written = [Path(p) for p in sys.argv[1:]]
for report in (p for p in written if p.suffix == ".json"):
    data = json.loads(report.read_text())
    rec = data["recording"]
    print(f"\n{rec['filename']}: {rec['duration']:.1f} s, language {', '.join(rec['languages'])}")
    for s in data["speakers"]:
        print(f"  {s['label']}: {s['speech_duration']:.1f} s of speech")
    for u in data["utterances"][:6]:
        print(f"  [{u['start']:5.1f}s] {u['speaker']}: {u['text']}")
    if len(data["utterances"]) > 6:
        print(f"  ... {len(data['utterances']) - 6} more utterances")
    stem = report.name.removesuffix(".json")
    files = sorted(str(p) for p in written if p.name.startswith(f"{stem}."))
    print("  reports: " + "  ".join(files))
EOF
echo
if ((status)); then
  echo "demo: some recordings failed (see the errors above)" >&2
  exit "$status"
fi
echo "demo: done; open the .html report in a browser, or see README.md for the API"
