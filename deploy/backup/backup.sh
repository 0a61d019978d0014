#!/bin/sh
# Dumps the mailfleet database (pg_dump custom format) into BACKUP_DIR and keeps the newest.
#
#   BACKUP_DSN        the database, a libpq URI (default: MAILFLEET_POSTGRES__DSN)
#   BACKUP_DIR        where dumps go (default: /backups)
#   BACKUP_KEEP       dumps to keep, newest first (default: 7; 0: no limit by count)
#   BACKUP_KEEP_DAYS  also delete dumps older than this many days (default: 0, off)
#   PG_BIN            a directory holding pg_dump and pg_restore (default: from PATH)
#
# pg_dump must be of the server's major version (it refuses a newer server), so run this
# with the client tools of the version the server runs: the mailfleet-backup image
# (deploy/backup/Dockerfile) is built on the matching postgres image.
#
# The dump is written under a temporary name, checked with `pg_restore --list`, flushed to
# disk and only then renamed to mailfleet-<UTC time>.dump: a dump with that name is whole.
# The newest dump is never deleted by the retention rules.
set -eu

dsn=${BACKUP_DSN:-${MAILFLEET_POSTGRES__DSN:-}}
dir=${BACKUP_DIR:-/backups}
keep=${BACKUP_KEEP:-7}
keep_days=${BACKUP_KEEP_DAYS:-0}
bin=${PG_BIN:+$PG_BIN/}

if [ -z "$dsn" ]; then
    echo "backup: set BACKUP_DSN or MAILFLEET_POSTGRES__DSN" >&2
    exit 64
fi
mkdir -p "$dir"
name="mailfleet-$(date -u +%Y%m%dT%H%M%SZ).dump"
partial="$dir/.$name.partial"
trap 'rm -f "$partial"' EXIT INT TERM

started=$(date +%s)
"${bin}pg_dump" --format=custom --compress=6 --no-owner --file="$partial" --dbname="$dsn"
listing=$("${bin}pg_restore" --list "$partial")
entries=$(printf '%s\n' "$listing" | grep -c '^[0-9]' || true)
if [ "$entries" -eq 0 ]; then
    echo "backup: the dump lists no entries" >&2
    exit 1
fi
sync "$partial"
mv "$partial" "$dir/$name"
sync "$dir"
trap - EXIT INT TERM
size=$(wc -c <"$dir/$name")
echo "backup: $dir/$name, $size bytes, $entries entries, $(($(date +%s) - started)) s"

# Retention. Names sort by time; the dump just written is the newest and always stays.
# Leftovers of runs that were killed mid-dump go after a day.
find "$dir" -maxdepth 1 -name '.mailfleet-*.dump.partial' -mmin +1440 -exec rm -f {} +
if [ "$keep" -gt 0 ]; then
    ls -1 "$dir" | grep -E '^mailfleet-[0-9]{8}T[0-9]{6}Z\.dump$' | sort -r | tail -n +"$((keep + 1))" |
        while read -r old; do
            rm -f "$dir/$old"
            echo "backup: deleted $old (beyond the newest $keep)"
        done
fi
if [ "$keep_days" -gt 0 ]; then
    find "$dir" -maxdepth 1 -name 'mailfleet-*.dump' ! -name "$name" -mtime +"$((keep_days - 1))" |
        while read -r old; do
            rm -f "$old"
            echo "backup: deleted ${old##*/} (older than $keep_days days)"
        done
fi
