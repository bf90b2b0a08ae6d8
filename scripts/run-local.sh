#!/usr/bin/env bash
# The README's run command: the whole pipeline on this machine, no Docker and no internet.
# Starts Kafka + PostgreSQL (scripts/dev-services.sh), the randomuser stub serving real captured
# users, applies the migrations, then runs the extractor and the loader until Ctrl-C, which sends
# each one SIGTERM so in-flight work finishes and is committed.
#
# Every variable in the README's table applies (EXTRACT_INTERVAL, EXTRACT_MAX_FETCHES, ...).
# Set RANDOMUSER_URL to use a real endpoint instead of the stub.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
log() { printf '[run-local] %s\n' "$*" >&2; }

scripts/build-deps.sh
scripts/dev-services.sh up
eval "$(scripts/dev-services.sh env)"
export KAFKA_BROKERS DATABASE_URL
export DATA_DIR="${DATA_DIR:-data}" LOG_DIR="${LOG_DIR:-logs}"
# A local run shows its Parquet files within a minute; the product's default is 10 min.
export PARQUET_ROLL_INTERVAL="${PARQUET_ROLL_INTERVAL:-1m}"

log "building release binaries"
cargo build --release --locked -p extractor -p loader -p randomuser-stub
bin=target/release
mkdir -p "$LOG_DIR" "$DATA_DIR"

pids=()
stop() {
  trap - EXIT INT TERM
  log "stopping (SIGTERM): ${pids[*]:-}"
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
}
trap stop EXIT INT TERM

if [ -z "${RANDOMUSER_URL:-}" ]; then
  export STUB_ADDR="${STUB_ADDR:-127.0.0.1:8080}"
  "$bin/randomuser-stub" >"$LOG_DIR/stub.out" 2>&1 &
  pids+=("$!")
  export RANDOMUSER_URL="http://${STUB_ADDR}/api/1.4/"
  log "randomuser stub on $RANDOMUSER_URL (real captured users)"
fi

"$bin/loader" migrate
LOADER_SKIP_MIGRATIONS=true "$bin/loader" run &
pids+=("$!")
"$bin/extractor" &
pids+=("$!")

cat >&2 <<MSG
[run-local] running. Logs in $LOG_DIR/, Parquet in $DATA_DIR/, status on :2112 (extractor) and :2113 (loader).
[run-local]   psql "$(printf '%s' "$DATABASE_URL")" -c 'select count(*) from processed_data'
[run-local]   ls $DATA_DIR/processed/      (files roll every PARQUET_ROLL_INTERVAL=$PARQUET_ROLL_INTERVAL, and on Ctrl-C)
[run-local] Ctrl-C stops everything.
MSG
wait
