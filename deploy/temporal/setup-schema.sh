#!/bin/sh
# Temporal's PostgreSQL schemas (run by the compose service temporal-schema, image temporalio/admin-tools).
# Idempotent: a database whose schema exists is only brought up to date, so a restart changes nothing.
set -eu
: "${POSTGRES_SEEDS:?}" "${POSTGRES_USER:?}" "${DB_PORT:?}" "${SQL_PASSWORD:?}"
SCHEMA=/etc/temporal/schema/postgresql/v12

sql() {
  temporal-sql-tool --plugin postgres12 --ep "$POSTGRES_SEEDS" -u "$POSTGRES_USER" -p "$DB_PORT" "$@"
}

setup() {  # database, versioned schema directory
  if sql --db "$1" update-schema -d "$2" >/dev/null 2>&1; then
    echo "schema of $1 is current"
    return
  fi
  sql --db "$1" create || echo "database $1 exists"  # a bad password fails setup-schema below, loudly
  sql --db "$1" setup-schema -v 0.0
  sql --db "$1" update-schema -d "$2"
  echo "schema of $1 created"
}

setup "${DBNAME:-temporal}" "$SCHEMA/temporal/versioned"
setup "${VISIBILITY_DBNAME:-temporal_visibility}" "$SCHEMA/visibility/versioned"
