#!/bin/bash
# labctl TimescaleDB entrypoint (runs as root, drops to the postgres OS user).
#   env POSTGRES_USER (lab), POSTGRES_DB (iiot),
#       POSTGRES_PASSWORD_FILE (/run/labctl/db-password; trailing newlines stripped)
#   data: $PGDATA (/var/lib/postgresql/data)
#   /docker-entrypoint-initdb.d/*.sql: applied (sorted, as POSTGRES_USER, to POSTGRES_DB)
#   on every start; they must be idempotent.
# Arguments: "postgres [extra server args]" (default) or any other command to exec as is.
set -Eeuo pipefail

log() { echo "labctl-entrypoint: $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

if [ "${1:-postgres}" != postgres ]; then exec "$@"; fi
[ $# -gt 0 ] && shift

: "${PGDATA:=/var/lib/postgresql/data}"
: "${POSTGRES_USER:=lab}"
: "${POSTGRES_DB:=iiot}"
: "${POSTGRES_PASSWORD_FILE:=/run/labctl/db-password}"
export PGDATA

[ -z "${POSTGRES_PASSWORD:-}" ] || die "POSTGRES_PASSWORD is not supported (the password must not be an environment variable); put it in a file and set POSTGRES_PASSWORD_FILE (default /run/labctl/db-password)"
[ "$(id -u)" = 0 ] || die "must start as root (it drops to the postgres user itself)"
[ -f "$POSTGRES_PASSWORD_FILE" ] || die "password file '$POSTGRES_PASSWORD_FILE' not found: copy it into the container before start (labctl: /run/labctl/db-password) or mount a secret and set POSTGRES_PASSWORD_FILE"
[ -r "$POSTGRES_PASSWORD_FILE" ] || die "password file '$POSTGRES_PASSWORD_FILE' is not readable"
# $(<file) strips trailing newlines; the value lives only in this shell (not exported).
pw="$(<"$POSTGRES_PASSWORD_FILE")"
[ -n "$pw" ] || die "password file '$POSTGRES_PASSWORD_FILE' is empty"

as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"; }

mkdir -p "$PGDATA" /var/run/postgresql
chown postgres:postgres /var/run/postgresql
chmod 2775 /var/run/postgresql
# Fix ownership only where needed (a recursive chown on every start is slow).
find "$PGDATA" \! -user postgres -exec chown postgres:postgres {} +
chmod 700 "$PGDATA"

export TZ=UTC
first_start=0
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  first_start=1
  log "empty data directory: running initdb"
  as_pg initdb -D "$PGDATA" -U postgres --encoding=UTF8 --locale=C.UTF-8 \
    --auth-local=peer --auth-host=scram-sha-256 >&2
  cat > "$PGDATA/pg_hba.conf" <<'EOF'
# TYPE  DATABASE  USER      ADDRESS       METHOD
local   all       postgres                peer
local   all       all                     scram-sha-256
host    all       all       0.0.0.0/0     scram-sha-256
host    all       all       ::/0          scram-sha-256
EOF
  chown postgres:postgres "$PGDATA/pg_hba.conf"
  echo "include_dir = 'conf.d'" >> "$PGDATA/postgresql.conf"
fi

# Settings rewritten on every start (later include wins over postgresql.conf).
mkdir -p "$PGDATA/conf.d"
cat > "$PGDATA/conf.d/00-labctl.conf" <<'EOF'
# written by the labctl entrypoint on every start: edits are lost
listen_addresses = '*'
port = 5432
shared_preload_libraries = 'timescaledb'
timezone = 'UTC'
log_timezone = 'UTC'
password_encryption = 'scram-sha-256'
timescaledb.telemetry_level = off
timescaledb.max_background_workers = 8
max_worker_processes = 16
max_connections = 100
shared_buffers = 256MB
effective_cache_size = 1GB
maintenance_work_mem = 64MB
work_mem = 8MB
wal_buffers = 8MB
max_wal_size = 1GB
logging_collector = off
log_destination = 'stderr'
EOF
# TLS with a self-signed certificate, made once per data directory: clients that ask for
# encryption (sslmode=require, JDBC's default "prefer") get it, e.g. across hosts. It proves
# nothing about the server's identity; sslmode=verify-full needs a CA-signed certificate.
if [ ! -s "$PGDATA/server.key" ] || [ ! -s "$PGDATA/server.crt" ]; then
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=timescaledb" \
    -keyout "$PGDATA/server.key" -out "$PGDATA/server.crt" 2>/dev/null || die "could not make a TLS certificate"
  chown postgres:postgres "$PGDATA/server.key" "$PGDATA/server.crt"
  chmod 600 "$PGDATA/server.key"
  log "made a self-signed TLS certificate"
fi
echo "ssl = on" >> "$PGDATA/conf.d/00-labctl.conf"
chown -R postgres:postgres "$PGDATA/conf.d"

# --- setup phase: temporary server on the unix socket only ---
as_pg pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses='' -c timescaledb.max_background_workers=0" start >&2 \
  || die "temporary server did not start"

psql_pg() { as_pg psql -X -q -v ON_ERROR_STOP=1 -h /var/run/postgresql -U postgres "$@"; }

sql_pw="${pw//\'/\'\'}"   # SQL standard string literal (standard_conforming_strings=on)
# The SQL travels on stdin (printf is a builtin): the password never appears in argv or env.
printf '%s\n' \
  "SELECT format('CREATE ROLE %I', :'u') WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = :'u') \\gexec" \
  "SELECT format('ALTER ROLE %I WITH LOGIN SUPERUSER PASSWORD %L', :'u', '${sql_pw}') \\gexec" \
  "SELECT format('CREATE DATABASE %I OWNER %I', :'d', :'u') WHERE NOT EXISTS (SELECT 1 FROM pg_database WHERE datname = :'d') \\gexec" \
  | psql_pg -d postgres -v u="$POSTGRES_USER" -v d="$POSTGRES_DB" \
  || die "could not create/update role '$POSTGRES_USER' or database '$POSTGRES_DB'"
unset pw sql_pw
log "role '$POSTGRES_USER' (password from $POSTGRES_PASSWORD_FILE) and database '$POSTGRES_DB' ready"

if [ "$first_start" = 1 ]; then
  PGOPTIONS="-c role=$POSTGRES_USER" psql_pg -d "$POSTGRES_DB" -c 'CREATE EXTENSION IF NOT EXISTS timescaledb' \
    || die "CREATE EXTENSION timescaledb failed"
fi

shopt -s nullglob
for f in /docker-entrypoint-initdb.d/*.sql; do
  log "applying $f"
  # Read as root, fed on stdin (the postgres user may not be able to read it).
  PGOPTIONS="-c role=$POSTGRES_USER" psql_pg -d "$POSTGRES_DB" < "$f" || die "$f failed"
done

# The Apache-only build cannot run TimescaleDB's built-in "Job History Log Retention
# Policy" (it fails hourly with a license error): unschedule it. alter_job() is not
# available under the apache license, so update the catalog directly.
psql_pg -d "$POSTGRES_DB" <<'SQL' || log "warning: could not unschedule the job-history retention job"
DO $$ BEGIN
  IF to_regclass('_timescaledb_config.bgw_job') IS NOT NULL THEN
    UPDATE _timescaledb_config.bgw_job SET scheduled = false
     WHERE proc_name = 'policy_job_stat_history_retention' AND scheduled;
  END IF;
END $$;
SQL

as_pg pg_ctl -D "$PGDATA" -m fast -w -t 60 stop >&2 || die "temporary server did not stop"

log "starting PostgreSQL"
exec setpriv --reuid=postgres --regid=postgres --init-groups -- postgres -D "$PGDATA" "$@"
