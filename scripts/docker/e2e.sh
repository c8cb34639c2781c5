#!/usr/bin/env bash
# End-to-end test of the Compose stack (compose.yaml) in a real Docker daemon:
#
#   1. images: the debootstrap base, the app image (scripts/docker/build-images.sh) and the
#      offline service image (deploy/compose/local-services.Dockerfile); existing ones are reused
#   2. random secrets, `docker compose up --wait` (api, worker, PostgreSQL, Redis, Prometheus,
#      Alertmanager; compose.yaml + deploy/compose/offline.yaml)
#   3. an admin account (`callannotate users create` in the api container), a token
#   4. the shared call sample uploaded over REST, followed over the WebSocket to job.completed,
#      its JSON export and HTML report downloaded
#   5. a second job: the worker container is killed while it runs, restarted, and the job
#      completes (second attempt)
#   6. Prometheus scrapes the api and the worker (its HTTP API is asked)
#   7. always, also after a failure or the time limit: `compose down -v`, the images this run
#      built are removed, the Docker daemon is stopped when this run started it
#
#   bash scripts/docker/e2e.sh            (root; .ci/run runs it when CI=true)
#   bash scripts/docker/e2e.sh --images-only
#                                         only step 1, keeping the images, with a running
#                                         daemon (.ci/run: in the background during the tests)
#
# Environment: CALLANNOTATE_E2E_TIMEOUT (seconds for steps 1-6, default 1200),
# CALLANNOTATE_E2E_KEEP_IMAGES=1 (keep the images for the next run), CALLANNOTATE_E2E_IMAGE
# (test this app image instead of building callannotate:dev-<arch>; it must exist),
# CALLANNOTATE_E2E_SAMPLE (default ../shared/data/diarization/callsample/sample.wav beside the
# repository). Prints the duration of every phase and of the whole run.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/../.." && pwd)
cd "$REPO"
DOCKER_ROOT=${CALLANNOTATE_DOCKER_ROOT:-/tmp/callannotate-docker}
export CALLANNOTATE_DOCKER_ROOT=$DOCKER_ROOT
STATE=${CALLANNOTATE_E2E_STATE:-$DOCKER_ROOT/e2e}
PROJECT=callannotate-e2e
ARCH=$(dpkg --print-architecture)
BASE_TAG=callannotate-base:bookworm-$ARCH
APP_TAG=${CALLANNOTATE_E2E_IMAGE:-callannotate:dev-$ARCH}
SERVICES_TAG=callannotate-services:local
SAMPLE=${CALLANNOTATE_E2E_SAMPLE:-$REPO/../shared/data/diarization/callsample/sample.wav}
PY=$REPO/.venv/bin/python
CLIENT=$REPO/scripts/docker/e2e_client.py

say() { echo "e2e: $*" >&2; }
die() {
  say "FAILED: $*"
  exit 1
}

compose() {
  docker compose -p "$PROJECT" -f "$REPO/compose.yaml" -f "$REPO/deploy/compose/offline.yaml" "$@"
}

ms() { echo $(($(date +%s%N) / 1000000)); }
seconds_since() { # seconds_since MS: "12.3"
  local d=$(($(ms) - $1))
  printf '%d.%d' $((d / 1000)) $((d % 1000 / 100))
}
T0=$(ms)
PHASE_START=$T0
PHASE=""
phase() { # phase NAME: close the previous phase (print its time), open the next
  [[ -n $PHASE ]] && printf 'e2e: phase %-28s %7s s\n' "$PHASE" "$(seconds_since "$PHASE_START")" >&2
  PHASE=$1
  PHASE_START=$(ms)
}

# Settings of the stack, shared by the outer (cleanup) and the inner (test) run
stack_env() {
  export CALLANNOTATE_IMAGE=$APP_TAG CALLANNOTATE_SERVICES_IMAGE=$SERVICES_TAG
  export CALLANNOTATE_SECRETS_DIR=$STATE/secrets CALLANNOTATE_HEALTH_INTERVAL=5s
  export CALLANNOTATE_PORT=${E2E_API_PORT:-18000} PROMETHEUS_PORT=${E2E_PROM_PORT:-19090}
  export ALERTMANAGER_PORT=${E2E_AM_PORT:-19093}
}

# ------------------------------------------------------------------------------ the images
# images LIST: the base, the service and the app image, each reused when it exists; the ones
# built here are appended to LIST (the run removes them at the end; /dev/null: kept).
images() {
  local built=$1 log=$DOCKER_ROOT/services-build.log
  bash scripts/docker/base-image.sh "$ARCH"
  if ! docker image inspect "$SERVICES_TAG" >/dev/null 2>&1; then
    echo "$SERVICES_TAG" >>"$built"
    # in the background, beside the app image (both mostly wait for downloads)
    DOCKER_BUILDKIT=0 docker build -q --network host --build-arg "BASE_IMAGE=$BASE_TAG" \
      -f deploy/compose/local-services.Dockerfile -t "$SERVICES_TAG" deploy/compose \
      >"$log" 2>&1 &
    services_pid=$!
  fi
  if [[ -n ${CALLANNOTATE_E2E_IMAGE:-} ]]; then
    docker image inspect "$APP_TAG" >/dev/null || die "no image $APP_TAG (CALLANNOTATE_E2E_IMAGE)"
  elif ! docker image inspect "$APP_TAG" >/dev/null 2>&1; then
    echo "$APP_TAG" >>"$built"
    # its default name and tag: callannotate:dev-<arch>
    env -u CALLANNOTATE_IMAGE_NAME -u CALLANNOTATE_IMAGE_TAG BASE_IMAGE=local \
      bash scripts/docker/build-images.sh --if-missing "$ARCH"
  fi
  if [[ -n $services_pid ]] && ! wait "$services_pid"; then
    tail -n 20 "$log" >&2
    die "building $SERVICES_TAG failed"
  fi
  services_pid=""
  docker image inspect "$APP_TAG" "$SERVICES_TAG" --format '{{index .RepoTags 0}}: {{.Size}} bytes' >&2
}

# ------------------------------------------------------------------------------ the test run
inner() {
  stack_env
  local url=http://127.0.0.1:$CALLANNOTATE_PORT
  [[ -r $SAMPLE ]] || die "no call sample at $SAMPLE (the shared data folder beside the repository)"
  [[ -x $PY ]] || die "no project venv ($PY): run scripts/setup.sh first"

  phase "images"
  images "$STATE/built-images"

  phase "compose up (until healthy)"
  bash deploy/compose/make-secrets.sh "$CALLANNOTATE_SECRETS_DIR" >/dev/null
  compose config -q
  compose up -d --wait --wait-timeout 300 >&2 || {
    compose ps -a >&2
    die "the stack did not become healthy"
  }
  # container start -> first passing health check, per container (cold start)
  # shellcheck disable=SC2046
  docker inspect $(compose ps -q) | "$PY" "$CLIENT" health-times >&2

  phase "admin account + token"
  local password token
  password=$(head -c 24 /dev/urandom | base64 -w0)
  printf '%s\n' "$password" |
    compose exec -T api callannotate users create e2e-admin --role admin --password-stdin >&2
  token=$(printf '%s\n' "$password" | "$PY" "$CLIENT" token "$url" e2e-admin |
    "$PY" -c 'import json,sys; print(json.load(sys.stdin)["token"])')
  export E2E_TOKEN=$token

  phase "job 1: upload, WS, report"
  local job1 job2
  job1=$("$PY" "$CLIENT" submit "$url" "$SAMPLE" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  "$PY" "$CLIENT" follow "$url" "$job1" --timeout 300 >&2
  "$PY" "$CLIENT" report "$url" "$job1" "$STATE/reports" >&2
  # shellcheck disable=SC2046
  docker stats --no-stream --format 'e2e: {{.Name}}: memory {{.MemUsage}}, CPU {{.CPUPerc}}' \
    $(compose ps -q) >&2

  phase "job 2: kill worker mid-job"
  job2=$("$PY" "$CLIENT" submit "$url" "$SAMPLE" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["job_id"])')
  "$PY" "$CLIENT" wait-started "$url" "$job2" --timeout 120 >&2
  sleep 2 # into the pipeline, not only claimed
  compose kill worker >&2
  say "worker killed while running job $job2"
  compose up -d --wait --wait-timeout 180 worker >&2
  "$PY" "$CLIENT" follow "$url" "$job2" --timeout 300 --min-attempts 2 >&2
  "$PY" "$CLIENT" report "$url" "$job2" "$STATE/reports" >&2

  phase "prometheus scrapes"
  "$PY" "$CLIENT" prometheus "http://127.0.0.1:$PROMETHEUS_PORT" --timeout 90 >&2
  phase ""
}

# ------------------------------------------------------------------------------ the outer run
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  stack_env
  local t
  t=$(date +%s)
  if ((rc != 0)) && docker version >/dev/null 2>&1; then
    say "logs of the failed run (last 40 lines per service):"
    compose logs --no-color --tail 40 >&2 2>/dev/null || true
  fi
  if docker version >/dev/null 2>&1; then
    compose down -v --remove-orphans -t 10 >/dev/null 2>&1 || say "warning: compose down failed"
    if [[ ${CALLANNOTATE_E2E_KEEP_IMAGES:-0} != 1 && -f $STATE/built-images ]]; then
      # shellcheck disable=SC2046
      docker rmi $(sort -u "$STATE/built-images") >/dev/null 2>&1 ||
        say "warning: could not remove $(sort -u "$STATE/built-images" | tr '\n' ' ')"
    fi
  fi
  if [[ -f $STATE/started-dockerd ]]; then
    bash scripts/docker/dockerd.sh stop
  fi
  rm -rf "$STATE"
  say "cleanup $(($(date +%s) - t)) s"
  if ((rc == 0)); then
    say "PASSED in $(seconds_since "$T0") s"
  else
    say "FAILED (exit $rc) after $(seconds_since "$T0") s"
  fi
  exit "$rc"
}

if [[ ${1:-} == --images-only ]]; then
  services_pid=""
  trap '[[ -n $services_pid ]] && kill "$services_pid" 2>/dev/null; true' EXIT
  eval "$(bash scripts/docker/dockerd.sh env)"
  docker version >/dev/null 2>&1 || die "no Docker daemon (scripts/docker/dockerd.sh start)"
  t=$(ms)
  images /dev/null
  say "images ready in $(seconds_since "$t") s"
  exit 0
fi

if [[ ${1:-} == --inner ]]; then
  services_pid=""
  trap '[[ -n $services_pid ]] && kill "$services_pid" 2>/dev/null; true' EXIT
  eval "$(bash scripts/docker/dockerd.sh env)"
  inner
  exit 0
fi

[[ $(id -u) -eq 0 ]] || die "run as root (dockerd, debootstrap)"
rm -rf "$STATE"
mkdir -p "$STATE"
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# free ports on 127.0.0.1 for the published api, Prometheus and Alertmanager
read -r E2E_API_PORT E2E_PROM_PORT E2E_AM_PORT < <(python3 -c '
import socket
socks = [socket.socket() for _ in range(3)]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in socks))')
export E2E_API_PORT E2E_PROM_PORT E2E_AM_PORT

phase "docker daemon"
if ! bash scripts/docker/dockerd.sh status >/dev/null 2>&1; then
  touch "$STATE/started-dockerd"
fi
bash scripts/docker/dockerd.sh start
eval "$(bash scripts/docker/dockerd.sh env)"
phase ""

# everything but the cleanup is bounded; the cleanup runs after a timeout too
timeout --kill-after=20 "${CALLANNOTATE_E2E_TIMEOUT:-1200}" bash "$0" --inner || {
  rc=$?
  ((rc == 124)) && say "time limit of ${CALLANNOTATE_E2E_TIMEOUT:-1200} s reached"
  exit "$rc"
}
