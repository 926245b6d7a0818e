#!/usr/bin/env bash
# Start Debian's PostgreSQL on loopback for the `server`-marked feedback/backfill tests, idempotently, and print
# the DSN to export:   export LORAFLOW_TEST_PG_URL=$(tests/pg_start.sh)
# Needs root (or sudo) and `apt-get install -y postgresql` (done here when missing). Stop it with
# `pg_ctlcluster 15 main stop` (the version is whatever Debian ships; found below).
set -euo pipefail
if ! command -v pg_ctlcluster >/dev/null; then
  (apt-get update -qq && apt-get install -y -qq postgresql) >&2
fi
ver=$(pg_lsclusters -h | awk 'NR==1 {print $1}')
if [ -z "$ver" ]; then
  ver=$(ls /usr/lib/postgresql | sort -n | tail -1)
  pg_createcluster "$ver" main >&2
fi
pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $4}' | grep -q online || pg_ctlcluster "$ver" main start >&2
for _ in $(seq 30); do
  su postgres -c "psql -qtAc 'select 1'" >/dev/null 2>&1 && break
  sleep 1
done
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_roles WHERE rolname='loraflow'\"" | grep -q 1 \
  || su postgres -c "psql -qc \"CREATE USER loraflow PASSWORD 'loraflow' CREATEDB;\"" >&2
su postgres -c "psql -qtAc \"SELECT 1 FROM pg_database WHERE datname='loraflow_test'\"" | grep -q 1 \
  || su postgres -c "createdb -O loraflow loraflow_test" >&2
port=$(pg_lsclusters -h | awk -v v="$ver" '$1==v && $2=="main" {print $3}')
echo "postgresql+psycopg://loraflow:loraflow@127.0.0.1:${port}/loraflow_test"
