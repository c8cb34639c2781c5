#!/usr/bin/env bash
# CI (GitHub Actions, Debian bookworm container, root): what this project's machines provide
# before .ci/run starts: Python 3.11 with venv, Node.js and npm (scripts/lint-ci.sh),
# PostgreSQL on 127.0.0.1:5432 (trust, database "test") and the redis-server binary (.ci/run
# starts Redis on 6379 when nothing listens there; some tests start private redis-server and
# PostgreSQL instances). scripts/setup.sh installs the rest. Safe to re-run.
set -euo pipefail

apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
  ca-certificates curl python3.11 python3.11-venv nodejs npm postgresql redis-server

# PostgreSQL: trust local TCP connections (a throw-away CI container), database "test".
version=$(ls /etc/postgresql)
hba=/etc/postgresql/$version/main/pg_hba.conf
sed -i -E 's/^(host\s+all\s+all\s+(127\.0\.0\.1\/32|::1\/128)\s+)\S+/\1trust/' "$hba"
pg_ctlcluster "$version" main restart # started by the package, or not: either way with $hba
for _ in $(seq 30); do
  pg_isready -h 127.0.0.1 -p 5432 -q && break
  sleep 1
done
psql() { su postgres -c "psql -h 127.0.0.1 -d postgres -tAc \"$1\""; }
[[ $(psql "select 1 from pg_database where datname = 'test'") == 1 ]] ||
  psql "create database test"
echo "services: PostgreSQL $version on 127.0.0.1:5432 (database test), redis-server installed"
