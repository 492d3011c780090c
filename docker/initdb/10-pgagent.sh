#!/bin/sh
# Run by the postgres image when it initialises an empty PGDATA (not after a preseed, which
# brings the restored cluster's roles and pg_hba.conf along).
#
# The role pgagent may replicate. It logs in by peer authentication over the shared socket
# directory: the sidecar runs as uid 999, which is `postgres` inside this container, so the
# map lets that OS user log in as pgagent. The lines go first in pg_hba.conf, before the
# default `local ... peer` lines that would match them without the map.
set -e

psql -v ON_ERROR_STOP=1 --no-psqlrc --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" <<'SQL'
CREATE ROLE pgagent LOGIN REPLICATION;
SQL

hba="$PGDATA/pg_hba.conf"
{
    echo "local   replication   pgagent   peer map=pgagent"
    echo "local   all           pgagent   peer map=pgagent"
    cat "$hba"
} > "$hba.pgagent"
mv "$hba.pgagent" "$hba"
echo "pgagent   postgres   pgagent" >> "$PGDATA/pg_ident.conf"
