#!/usr/bin/env bash
# Quick start: set everything up (like .ci/run) and annotate the shared call sample into out/.
#   bash scripts/demo.sh [FILE...]        (default: ../shared/data/diarization/callsample/sample.wav)
# Set CALLANNOTATE_SKIP_SETUP=1 to skip the install step on an already set-up checkout.
set -euo pipefail
cd "$(dirname "$0")/.."

if [[ "${CALLANNOTATE_SKIP_SETUP:-0}" != "1" || ! -x .venv/bin/callannotate ]]; then
  # The demo needs no browser; the tests do (scripts/setup.sh installs it by default).
  CALLANNOTATE_BROWSER_TESTS="${CALLANNOTATE_BROWSER_TESTS:-0}" bash scripts/setup.sh
fi

SHARED="${CALLANNOTATE_SHARED_DATA:-../shared/data}"
if (( $# )); then
  FILES=("$@")
else
  FILES=("$SHARED/diarization/callsample/sample.wav")
fi
for f in "${FILES[@]}"; do
  [[ -f "$f" ]] || { echo "demo: $f not found (set CALLANNOTATE_SHARED_DATA or pass a file)" >&2; exit 2; }
done

.venv/bin/callannotate annotate "${FILES[@]}" --out out/ --progress
echo "annotation written to out/ ($(ls out | tr '\n' ' '))"
