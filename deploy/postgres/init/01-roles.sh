#!/usr/bin/env bash
# Runs once, on the first start of an empty data volume (docker-entrypoint-initdb.d), as the
# superuser. Creates the owning role (runs `loader migrate`, owns the tables) and the restricted
# role `loader run` uses (SECURITY.md, "Least privilege"). Passwords come from the environment,
# passed to psql as variables so they are quoted by psql, never spliced into SQL text.
set -euo pipefail
: "${ETL_OWNER_PASSWORD:?}" "${ETL_LOADER_PASSWORD:?}"
db="${ETL_DATABASE:-etl}"

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname postgres \
  -v owner_pw="$ETL_OWNER_PASSWORD" -v loader_pw="$ETL_LOADER_PASSWORD" -v db="$db" <<'SQL'
CREATE ROLE etl LOGIN PASSWORD :'owner_pw';
CREATE ROLE etl_loader LOGIN PASSWORD :'loader_pw';
CREATE DATABASE :"db" OWNER etl;
SQL

psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$db" -v db="$db" <<'SQL'
-- PostgreSQL 15: only the database owner may create in public.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO etl, etl_loader;
GRANT USAGE ON SCHEMA public TO etl_loader;
-- Tables do not exist yet (the migrate job creates them, as etl): grant ahead, on whatever
-- etl creates in public. This also covers _sqlx_migrations, which the loader reads at start
-- to verify the schema. No DELETE (but of raw_payload_text, which migration 9 grants), no
-- TRUNCATE, no DDL for the loader.
ALTER DEFAULT PRIVILEGES FOR ROLE etl IN SCHEMA public
  GRANT SELECT, INSERT, UPDATE ON TABLES TO etl_loader;
SQL
