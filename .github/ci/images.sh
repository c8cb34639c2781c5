#!/usr/bin/env bash
# CI (GitHub Actions, ubuntu runner): the container images for amd64 and arm64.
#   images.sh build   scripts/docker/build-images.sh for both arches (arm64 under qemu)
#   images.sh scan    Trivy (.github/ci/install-trivy.sh, fixed version): fails on a HIGH or
#                     CRITICAL vulnerability that has a fixed version, in either image
#   images.sh push    docker push of both images and a multi-arch manifest IMAGE:TAG
# IMAGE defaults to ghcr.io/<owner>/callannotate; TAG to the git tag (v*) or ci-<sha>.
set -euo pipefail
cd "$(dirname "$0")/../.."

owner=${GITHUB_REPOSITORY_OWNER:-local}
IMAGE=${IMAGE:-ghcr.io/${owner,,}/callannotate}
if [[ -z ${TAG:-} ]]; then
  if [[ ${GITHUB_REF_TYPE:-} == tag ]]; then TAG=$GITHUB_REF_NAME; else TAG=ci-${GITHUB_SHA:0:12}; fi
fi
ARCHES=(amd64 arm64)
say() { echo "images.sh: $*" >&2; }

case ${1:-} in
build)
  CALLANNOTATE_IMAGE=$IMAGE CALLANNOTATE_IMAGE_TAG=$TAG \
    bash scripts/docker/build-images.sh "${ARCHES[@]}"
  ;;
scan)
  bash .github/ci/install-trivy.sh .tools/trivy >&2
  mkdir -p build/trivy
  failed=()
  for arch in "${ARCHES[@]}"; do
    ref=$IMAGE:$TAG-$arch
    say "scanning $ref"
    # The full report (every severity) is kept as a CI artifact; the gate is the second run.
    .tools/trivy/trivy image --quiet --scanners vuln --format json \
      --output "build/trivy/$arch.json" "$ref"
    .tools/trivy/trivy image --quiet --skip-db-update --scanners vuln \
      --severity HIGH,CRITICAL --ignore-unfixed --exit-code 1 "$ref" || failed+=("$ref")
  done
  if ((${#failed[@]})); then
    say "HIGH/CRITICAL vulnerabilities with a fix in: ${failed[*]}"
    exit 1
  fi
  say "no HIGH/CRITICAL vulnerability with a fixed version"
  ;;
push)
  for arch in "${ARCHES[@]}"; do
    docker push "$IMAGE:$TAG-$arch"
  done
  docker manifest rm "$IMAGE:$TAG" >/dev/null 2>&1 || true # a local list from an earlier run
  docker manifest create "$IMAGE:$TAG" "${ARCHES[@]/#/$IMAGE:$TAG-}"
  docker manifest push "$IMAGE:$TAG"
  say "pushed $IMAGE:$TAG (${ARCHES[*]})"
  ;;
*)
  echo "usage: $0 build|scan|push" >&2
  exit 2
  ;;
esac
