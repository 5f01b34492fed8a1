#!/bin/sh
# The restore Job (backup.yaml's CronJob hpsearch-restore, started by hand): the newest dump in
# $BACKUP_DIR, or $BACKUP_FILE, replaces the study database's tables. Stop the workers and the
# dashboard first (docs/cluster.md#backups).
set -eu
: "${BACKUP_DIR:?}" "${PGDATABASE:?}"
if [ -n "${PGPASSWORD_FILE:-}" ]; then PGPASSWORD="$(cat "$PGPASSWORD_FILE")"; export PGPASSWORD; fi
file="${BACKUP_FILE:-$(ls -1 "$BACKUP_DIR"/"$PGDATABASE"-*.dump 2>/dev/null | sort | tail -n 1)}"
if [ -z "$file" ] || [ ! -f "$file" ]; then
    echo "restore: no backup in $BACKUP_DIR" >&2
    exit 2
fi
pg_restore --clean --if-exists --no-owner --single-transaction --exit-on-error --dbname="$PGDATABASE" "$file"
echo "restore: $PGDATABASE from $file"
