#!/bin/sh
# Run once by the postgres image when it initializes an empty volume (docker-entrypoint-initdb.d),
# as the superuser: the role hpsearch connects as, owner of the database hpsearch and nothing
# else (no superuser, no CREATEDB, no CREATEROLE). Its password is the secret's file.
# tests/test_deploy.py runs this script against a real PostgreSQL.
set -eu
role="${HPSEARCH_DB_USER:-hpsearch}"
password="$(cat "$HPSEARCH_DB_PASSWORD_FILE")"
psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v role="$role" -v password="$password" -v database="$POSTGRES_DB" <<'SQL'
CREATE ROLE :"role" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION PASSWORD :'password';
ALTER DATABASE :"database" OWNER TO :"role";
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT, TEMPORARY ON DATABASE :"database" TO :"role";
SQL
