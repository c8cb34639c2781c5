#!/bin/bash
# Entry point of callannotate-services:local (local-services.Dockerfile): start one service the
# way its official image does, as its own unprivileged user.
#
#   local-service postgres            POSTGRES_USER, POSTGRES_DB, POSTGRES_PASSWORD_FILE as in
#                                      the postgres image; data in $PGDATA (a volume)
#   local-service redis ARGS...       ARGS (redis-server ...) --protected-mode no; data in /data
#   local-service prometheus ARGS...  prometheus ARGS
#   local-service alertmanager ARGS...
set -euo pipefail

service=${1:?usage: local-service postgres|redis|prometheus|alertmanager [ARGS...]}
shift

init_postgres() {
  local user=${POSTGRES_USER:-postgres} db=${POSTGRES_DB:-${POSTGRES_USER:-postgres}}
  local pwfile=${POSTGRES_PASSWORD_FILE:?POSTGRES_PASSWORD_FILE is required}
  [[ -r $pwfile && -s $pwfile ]] || {
    echo "local-service: cannot read $pwfile" >&2
    exit 1
  }
  chown postgres:postgres "$PGDATA" && chmod 0700 "$PGDATA"
  # initdb reads the first line of --pwfile; the postgres user reads a copy (the secret may be
  # owned by another uid)
  local copy
  copy=$(mktemp) && head -n 1 "$pwfile" >"$copy" && chown postgres "$copy"
  runuser -u postgres -- initdb -D "$PGDATA" -U "$user" --pwfile="$copy" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$copy"
  echo "host all all all scram-sha-256" >>"$PGDATA/pg_hba.conf"
  if [[ $db != postgres ]]; then
    echo "CREATE DATABASE \"$db\" OWNER \"$user\";" |
      runuser -u postgres -- postgres --single -D "$PGDATA" postgres >/dev/null
  fi
  echo "local-service: initialised $PGDATA (user $user, database $db)"
}

case $service in
postgres)
  [[ -s $PGDATA/PG_VERSION ]] || init_postgres
  exec runuser -u postgres -- postgres -D "$PGDATA" -c listen_addresses='*' "$@"
  ;;
redis)
  # as the official image: reachable from the other containers (no protected mode)
  cd /data
  exec runuser -u redis -- "${@:-redis-server}" --protected-mode no
  ;;
prometheus) exec runuser -u prometheus -- /usr/bin/prometheus "$@" ;;
alertmanager) exec runuser -u prometheus -- /usr/bin/prometheus-alertmanager "$@" ;;
*)
  echo "local-service: unknown service '$service'" >&2
  exit 2
  ;;
esac
