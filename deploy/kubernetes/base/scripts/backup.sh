#!/bin/sh
# The backup CronJob (backup.yaml): one pg_dump of the study database into $BACKUP_DIR, named
# by its UTC time, written under a temporary name and renamed only once complete, so the
# newest *.dump is always whole; the newest $BACKUP_KEEP are kept.
# tests/test_deploy.py runs it, then restore.sh, against a real PostgreSQL.
set -eu
: "${BACKUP_DIR:?}" "${PGDATABASE:?}"
keep="${BACKUP_KEEP:-14}"
if [ -n "${PGPASSWORD_FILE:-}" ]; then PGPASSWORD="$(cat "$PGPASSWORD_FILE")"; export PGPASSWORD; fi
name="$PGDATABASE-$(date -u +%Y%m%dT%H%M%SZ).dump"
pg_dump --format=custom --no-owner --file="$BACKUP_DIR/.$name.partial"
mv "$BACKUP_DIR/.$name.partial" "$BACKUP_DIR/$name"
echo "backup: $BACKUP_DIR/$name ($(wc -c < "$BACKUP_DIR/$name") bytes)"
ls -1 "$BACKUP_DIR"/"$PGDATABASE"-*.dump | sort -r | tail -n +"$((keep + 1))" | while read -r old; do
    rm -f "$old" && echo "backup: removed $old"
done
