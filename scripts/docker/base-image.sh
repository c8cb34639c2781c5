#!/usr/bin/env bash
# A local Debian bookworm base image with Python 3.11, for machines that cannot pull
# python:3.11-slim-bookworm (no registry access): debootstrap --variant=minbase into a folder,
# then `docker import` it. The Dockerfile builds on either (BASE_IMAGE build argument).
#
#   scripts/docker/base-image.sh [amd64|arm64]    (default: this machine's architecture)
#
# Tags callannotate-base:bookworm-<arch>; does nothing when that image exists
# (CALLANNOTATE_BASE_REBUILD=1 rebuilds it). arm64 on an amd64 host: debootstrap --foreign,
# then --second-stage in a chroot under qemu-user-static (binfmt_misc, see dockerd.sh start).
# Needs root, debootstrap (installed when missing) and a running Docker (DOCKER_HOST).
# Takes about 75 s for amd64 and about 9 minutes for arm64 (qemu, 2 busy cores); downloads are cached in
# $CALLANNOTATE_DOCKER_ROOT/debootstrap-cache.
set -euo pipefail

ROOT=${CALLANNOTATE_DOCKER_ROOT:-/tmp/callannotate-docker}
MIRROR=${CALLANNOTATE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
# python3 + venv as in python:3.11-slim-bookworm (Debian's python3 is 3.11); the rest of what
# the runtime needs is installed by the Dockerfile, the same way on both bases.
INCLUDE=python3,python3-venv,ca-certificates

say() { echo "base-image.sh: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

native_arch() { dpkg --print-architecture; }
ARCH=${1:-$(native_arch)}
case $ARCH in
amd64 | arm64) ;;
*) die "unknown architecture '$ARCH' (amd64 or arm64)" ;;
esac
TAG=callannotate-base:$SUITE-$ARCH

[[ $(id -u) -eq 0 ]] || die "debootstrap needs root"
docker version >/dev/null 2>&1 ||
  die "no Docker daemon at ${DOCKER_HOST:-the default socket}; run: eval \"\$(scripts/docker/dockerd.sh env)\""
# one run per architecture at a time: a second one waits, then finds the image
mkdir -p "$ROOT"
exec 9>"$ROOT/base-image-$ARCH.lock"
if ! flock -n 9; then
  say "waiting for another base-image.sh $ARCH run (lock $ROOT/base-image-$ARCH.lock)"
  flock 9
fi
if [[ ${CALLANNOTATE_BASE_REBUILD:-0} != 1 ]] && docker image inspect "$TAG" >/dev/null 2>&1; then
  say "$TAG exists"
  exit 0
fi
command -v debootstrap >/dev/null || {
  say "installing debootstrap (apt)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap \
    >/dev/null
}

mkdir -p "$ROOT/debootstrap-cache"
WORK=$(mktemp -d "$ROOT/rootfs-$ARCH.XXXXXX")
cleanup() {
  # a failed --second-stage can leave /proc etc. mounted inside the chroot
  local m
  for m in proc sys dev/pts dev; do
    if mountpoint -q "$WORK/$m" 2>/dev/null; then umount -l "$WORK/$m" || true; fi
  done
  rm -rf --one-file-system "$WORK"
}
trap cleanup EXIT

LOG=$ROOT/base-image-$ARCH.log
: >"$LOG"
start=$(date +%s)
opts=(--variant=minbase --arch="$ARCH" --include="$INCLUDE" --cache-dir="$ROOT/debootstrap-cache")
if [[ $ARCH == "$(native_arch)" ]]; then
  say "debootstrap $SUITE $ARCH (log $LOG)"
  debootstrap "${opts[@]}" "$SUITE" "$WORK" "$MIRROR" >>"$LOG" 2>&1 ||
    die "debootstrap failed; last lines of $LOG: $(tail -n 5 "$LOG")"
else
  [[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] ||
    die "arm64 binaries cannot run here: binfmt_misc/qemu-aarch64 missing (scripts/docker/dockerd.sh start sets it up)"
  say "debootstrap --foreign $SUITE $ARCH, then --second-stage under qemu (log $LOG)"
  debootstrap --foreign "${opts[@]}" "$SUITE" "$WORK" "$MIRROR" >>"$LOG" 2>&1 ||
    die "debootstrap --foreign failed; last lines of $LOG: $(tail -n 5 "$LOG")"
  # the F(ix binary) flag of Debian's qemu-aarch64 registration makes copying qemu unnecessary
  chroot "$WORK" /debootstrap/debootstrap --second-stage >>"$LOG" 2>&1 ||
    die "debootstrap --second-stage failed; last lines of $LOG: $(tail -n 5 "$LOG")"
fi

# apt sources with updates and security fixes, so `apt-get update` in the Dockerfile sees them
cat >"$WORK/etc/apt/sources.list" <<SOURCES
deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main
SOURCES
rm -rf "$WORK"/var/lib/apt/lists/* "$WORK"/var/cache/apt/archives/*.deb "$WORK"/var/log/*.log \
  "$WORK"/debootstrap
[[ -x $WORK/usr/bin/python3 ]] || die "no python3 in the new root file system"

# `docker load` of a one-layer image, not `docker import`: import records the daemon's own
# architecture (Debian's dockerd ignores --platform), and an arm64 base labelled amd64 breaks
# `docker build --platform linux/arm64`.
say "docker load -> $TAG"
OUT=$(mktemp -d "$ROOT/image-$ARCH.XXXXXX")
trap 'cleanup; rm -rf "$OUT"' EXIT
tar --numeric-owner -C "$WORK" -cf "$OUT/layer.tar" .
diff_id=$(sha256sum "$OUT/layer.tar" | cut -d' ' -f1)
mkdir "$OUT/$diff_id"
mv "$OUT/layer.tar" "$OUT/$diff_id/layer.tar"
variant=""
[[ $ARCH == arm64 ]] && variant=',"variant":"v8"'
printf '%s' '{"architecture":"'"$ARCH"'"'"$variant"',"os":"linux","created":"'"$(date -u +%FT%TZ)"'",' \
  '"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",' \
  '"LANG=C.UTF-8"],"Cmd":["/bin/bash"]},' \
  '"rootfs":{"type":"layers","diff_ids":["sha256:'"$diff_id"'"]}}' >"$OUT/config.json"
config_id=$(sha256sum "$OUT/config.json" | cut -d' ' -f1)
mv "$OUT/config.json" "$OUT/$config_id.json"
printf '[{"Config":"%s.json","RepoTags":["%s"],"Layers":["%s/layer.tar"]}]' \
  "$config_id" "$TAG" "$diff_id" >"$OUT/manifest.json"
tar -C "$OUT" -c manifest.json "$config_id.json" "$diff_id" | docker load >/dev/null
[[ $(docker image inspect -f '{{.Os}}/{{.Architecture}}' "$TAG") == "linux/$ARCH" ]] ||
  die "$TAG was loaded with the wrong platform"
say "$TAG ready in $(($(date +%s) - start)) s ($(docker image inspect -f '{{.Size}}' "$TAG" | numfmt --to=iec))"
