#!/usr/bin/env bash
# The project's test command (README, .ci/run): provisions a real Kafka broker, a real
# PostgreSQL and a real S3 API server (moto) with scripts/dev-services.sh — in the background,
# while the code is checked and compiled — then runs every test (unit and integration) against
# them. Exits non-zero on any failure.
#
#   ETL_USE_EXISTING_SERVICES=1  skip provisioning and use KAFKA_BROKERS / DATABASE_URL as set
#                                (e.g. a Redpanda or a managed cluster you point it at); the fault
#                                suite, which stops and starts the local services, is left out.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

log() { printf '[test] %s\n' "$*" >&2; }
started=$(date +%s)

scripts/build-deps.sh

services_pid=""
if [ "${ETL_USE_EXISTING_SERVICES:-0}" != "1" ]; then
  # Mostly downloads and waiting: overlapped with the compile below.
  mkdir -p .services
  log "starting the services in the background (log: .services/up.log)"
  scripts/dev-services.sh up >.services/up.log 2>&1 &
  services_pid=$!
  eval "$(scripts/dev-services.sh env)"
fi
services_ready() {
  [ -z "$services_pid" ] && return 0
  if ! wait "$services_pid"; then
    cat .services/up.log >&2
    log "scripts/dev-services.sh up failed"
    exit 1
  fi
  services_pid=""
  tail -n 3 .services/up.log >&2
}
export KAFKA_BROKERS="${KAFKA_BROKERS:-localhost:9092}"
export DATABASE_URL="${DATABASE_URL:-postgres://etl:etl@localhost:5432/etl}"
log "broker ${KAFKA_BROKERS}; database $(printf '%s' "$DATABASE_URL" | sed -E 's#://([^:/@]+):[^@]*@#://\1:***@#')"

log "supply chain: cargo deny check bans licenses sources (scripts/supply-chain.sh)"
scripts/supply-chain.sh

log "deployment files (Dockerfile, compose, k8s, alerts, dashboard): scripts/validate-deploy.sh"
scripts/validate-deploy.sh

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
log "compiling the tests"
cargo test --workspace --locked --no-run --quiet
services_ready
if [ "${ETL_USE_EXISTING_SERVICES:-0}" != "1" ]; then
  log "cargo test (unit, integration and the fault suite, against the real broker, database and S3 server)"
  cargo test --workspace --locked --no-fail-fast
  log "benchmark, tiny size (keeps scripts/bench.sh working; figures are not asserted)"
  BENCH_PROFILE=debug ETL_USE_EXISTING_SERVICES=1 scripts/bench.sh --tiny
else
  # The fault suite stops and starts the broker and the database through dev-services.sh, and
  # the Kafka-tools test uses the jars it resolved: everything else runs against your services.
  log "cargo test (unit and integration; the fault suite and the standby test need scripts/dev-services.sh)"
  cargo test --workspace --locked --no-fail-fast --exclude loader
  cargo test --locked --no-fail-fast -p loader --lib --bins --test pipeline --test service --test sinks --test row_cost --test replay --test readme --test hostile_input --test identity --test offsets --test dlq_topic --test rebalance --test limits
fi
log "all green in $(( $(date +%s) - started ))s"
