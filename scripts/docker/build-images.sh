#!/usr/bin/env bash
# Builds the CallAnnotate images for amd64 and arm64 from the one Dockerfile (classic builder
# with --platform; arm64 runs under qemu-user-static on an amd64 host).
#
#   scripts/docker/build-images.sh [--if-missing] [amd64] [arm64]    (default: both)
#
# Tags IMAGE:TAG-<arch> (IMAGE=callannotate, TAG=dev) and IMAGE:TAG for this host's arch.
#   BASE_IMAGE=python:3.11-slim-bookworm   the default (needs Docker Hub or a mirror)
#   BASE_IMAGE=local                       callannotate-base:bookworm-<arch>, made by
#                                          scripts/docker/base-image.sh when missing
#   CALLANNOTATE_IMAGE_NAME / CALLANNOTATE_IMAGE_TAG   image name and tag
#   --if-missing                           skip an arch whose image already exists
# Before building, the converted models are prepared on the host into build/docker-models/
# (`callannotate models prepare`, needs the dev venv .venv with torch: scripts/setup.sh); they
# are reused until the model packages, config/models.yaml or the conversion code change.
#   CALLANNOTATE_BUILD_CA                  CA bundle pip trusts in the build (default: PIP_CERT)
# Uses DOCKER_HOST, or the private daemon of scripts/docker/dockerd.sh when it runs.
# One run at a time (a lock in CALLANNOTATE_DOCKER_ROOT): a second run waits for the first, then
# finds its layers cached; .ci/run builds in the background while the tests run, and the
# image tests' own run of this script waits for it instead of building the same layers twice.
set -euo pipefail
cd "$(dirname "$0")/../.."

IMAGE=${CALLANNOTATE_IMAGE_NAME:-callannotate}
TAG=${CALLANNOTATE_IMAGE_TAG:-dev}
BASE=${BASE_IMAGE:-python:3.11-slim-bookworm}
MODELS=build/docker-models
LOG_DIR=${CALLANNOTATE_DOCKER_ROOT:-/tmp/callannotate-docker}

say() { echo "build-images.sh: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

if_missing=0
arches=()
for arg in "$@"; do
  case $arg in
  --if-missing) if_missing=1 ;;
  amd64 | arm64) arches+=("$arg") ;;
  *) die "unknown argument '$arg' (usage: $0 [--if-missing] [amd64] [arm64])" ;;
  esac
done
((${#arches[@]})) || arches=(amd64 arm64)

if [[ -z ${DOCKER_HOST:-} ]] && bash scripts/docker/dockerd.sh status >/dev/null 2>&1; then
  eval "$(bash scripts/docker/dockerd.sh env)"
fi
docker version >/dev/null 2>&1 ||
  die "no Docker daemon at ${DOCKER_HOST:-the default socket} (scripts/docker/dockerd.sh start)"
[[ -f requirements.lock && -f requirements/models.txt ]] ||
  die "requirements.lock / requirements/models.txt missing (bash scripts/lock.sh)"
native=$(dpkg --print-architecture 2>/dev/null || uname -m)
[[ $native == x86_64 ]] && native=amd64
[[ $native == aarch64 ]] && native=arm64

# ----------------------------------------------------------------------- one run at a time
mkdir -p "$LOG_DIR"
exec 9>"$LOG_DIR/build-images.lock"
if ! flock -n 9; then
  say "waiting for another build-images.sh run to finish (lock $LOG_DIR/build-images.lock)"
  waited=$(date +%s)
  flock 9
  say "waited $(($(date +%s) - waited)) s for the other run"
fi

# ----------------------------------------------------------------------- converted models
models_stamp() {
  {
    cat requirements/models.txt config/models.yaml
    find src/callannotate/pipeline src/callannotate/voices -name '*.py' -print0 | sort -z |
      xargs -0 cat
  } | sha256sum | cut -d' ' -f1
}

prepare_models() {
  local stamp
  stamp=$(models_stamp)
  if [[ -f $MODELS.stamp && $(cat "$MODELS.stamp") == "$stamp" && -d $MODELS ]]; then
    say "models in $MODELS are up to date"
    return 0
  fi
  [[ -x .venv/bin/callannotate ]] || die "no .venv (run scripts/setup.sh): it converts the models"
  say "preparing the models into $MODELS (ONNX export with torch, a few minutes once)"
  rm -rf "$MODELS" "$MODELS.stamp"
  CALLANNOTATE_MODELS_CONFIG=config/models.yaml \
    .venv/bin/callannotate models prepare --cache-dir "$MODELS" >&2
  echo "$stamp" >"$MODELS.stamp"
}

# ----------------------------------------------------------------------- CA for pip
# pip in the build stage trusts what pip here trusts: the bundle named by PIP_CERT (or
# CALLANNOTATE_BUILD_CA), e.g. behind a TLS-inspecting proxy. Never in the runtime stage.
build_ca() {
  local ca=${CALLANNOTATE_BUILD_CA:-${PIP_CERT:-}}
  rm -rf build/docker-ca
  mkdir -p build/docker-ca
  if [[ -n $ca ]]; then
    [[ -f $ca ]] || die "CA bundle $ca (CALLANNOTATE_BUILD_CA / PIP_CERT) is not a file"
    cp "$ca" build/docker-ca/host-ca.pem
  fi
}

# ----------------------------------------------------------------------- images
base_for() { # base_for ARCH: the base image to build on
  if [[ $BASE == local ]]; then
    bash scripts/docker/base-image.sh "$1" >&2
    echo "callannotate-base:bookworm-$1"
  else
    echo "$BASE"
  fi
}

build() {
  local arch=$1 ref=$IMAGE:$TAG-$1 base start log
  if ((if_missing)) && docker image inspect "$ref" >/dev/null 2>&1; then
    say "$ref exists (--if-missing)"
    return 0
  fi
  base=$(base_for "$arch")
  log=$LOG_DIR/build-$arch.log
  mkdir -p "$LOG_DIR"
  say "building $ref on $base (linux/$arch; log $log)"
  start=$(date +%s)
  local attempt
  for attempt in 1 2; do
    if DOCKER_BUILDKIT=0 docker build --network host --platform "linux/$arch" \
      --build-arg "BASE_IMAGE=$base" -t "$ref" . >"$log" 2>&1; then
      break
    fi
    # the classic builder's intermediate images are untagged: a `docker rmi`/prune running at
    # the same time can remove one under it; a second run picks up from the layer cache
    if ((attempt == 1)) && grep -qE "unknown parent image ID|No such image" "$log"; then
      say "an intermediate image vanished during the build (concurrent rmi?); building again"
      continue
    fi
    tail -n 30 "$log" >&2
    die "building $ref failed (log $log)"
  done
  say "$ref built in $(($(date +%s) - start)) s, $(docker image inspect -f '{{.Size}}' "$ref" |
    numfmt --to=si)B"
}

prepare_models
# the cache writes its files 0600 (mkstemp); the image's user (uid 10001) must read them
chmod -R a+rX "$MODELS"
build_ca
for arch in "${arches[@]}"; do
  build "$arch"
  if [[ $arch == "$native" ]]; then
    docker tag "$IMAGE:$TAG-$arch" "$IMAGE:$TAG"
  fi
done
