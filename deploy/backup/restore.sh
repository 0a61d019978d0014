#!/bin/sh
# Restores a dump made by backup.sh into an empty database:
#
#   restore.sh DUMP TARGET_DSN
#
# TARGET_DSN is a libpq URI of a database that exists and holds no tables (createdb it
# first). The dump is checked with `pg_restore --list`, then restored in one transaction, so a
# failure leaves the database empty. Afterwards run `mailfleet migrate` against it (a dump
# older than the release applies the migrations it lacks) before starting the services.
# PG_BIN: a directory holding pg_restore and psql (default: from PATH), of a version at
# least that of the pg_dump that made the dump.
set -eu

if [ "$#" -ne 2 ]; then
    echo "usage: restore.sh DUMP TARGET_DSN" >&2
    exit 64
fi
dump=$1
dsn=$2
bin=${PG_BIN:+$PG_BIN/}

"${bin}pg_restore" --list "$dump" >/dev/null
tables=$("${bin}psql" --no-psqlrc --tuples-only --no-align --dbname="$dsn" \
    --command="SELECT count(*) FROM pg_tables WHERE schemaname = 'public'")
if [ "$tables" -ne 0 ]; then
    echo "restore: the target database has $tables tables; restore into an empty one" >&2
    exit 1
fi
started=$(date +%s)
"${bin}pg_restore" --exit-on-error --single-transaction --no-owner --no-privileges \
    --dbname="$dsn" "$dump"
echo "restore: $dump restored in $(($(date +%s) - started)) s; now run: mailfleet migrate"
