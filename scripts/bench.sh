#!/usr/bin/env bash
# The loader's benchmark (issue: loader vs. PostgreSQL's COPY ceiling). Provisions Kafka and
# PostgreSQL like the tests do, builds the release binaries, runs `bench` and adds the run to
# BENCHMARKS.md (newest first). Arguments go to `bench` (`target/release/bench --help`).
#
#   scripts/bench.sh                      the full run: 2,000 records x 100 users
#   scripts/bench.sh --tiny               a seconds-long run into target/bench-tiny.md (CI keeps it working)
#   scripts/bench.sh --lake-only          only the lake step (issue 19), added to BENCHMARKS.md
#   scripts/bench.sh --peer-only          only the peer step (issue 22: Kafka Connect + Debezium's JDBC
#                                         sink, scripts/peer.sh), added to BENCHMARKS.md; --skip-peer leaves it out
#
#   BENCH_PROFILE=debug                   use the debug build (CI's tiny run: no second compile)
#   ETL_USE_EXISTING_SERVICES=1           use KAFKA_BROKERS / DATABASE_URL as set
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

profile="${BENCH_PROFILE:-release}"
args=()
for a in "$@"; do
  if [ "$a" = "--tiny" ]; then
    args+=(--records 20 --users 10 --reps 2 --volume-records 40 --naive-records 5 --freshness-for 5s --freshness-interval 500ms
           --freshness-users 10 --scale-loaders 1,2,4 --rebalance-records 30 --idle-for 3s
           --idle-interval 500ms --idle-users 10 --lake-for 3s --lake-roll-interval 1s
           --lake-big-responses 2 --lake-big-users 100 --peer-reps 1 --out target/bench-tiny.md)
  else
    args+=("$a")
  fi
done

scripts/build-deps.sh
if [ "${ETL_USE_EXISTING_SERVICES:-0}" != "1" ]; then
  scripts/dev-services.sh up
  eval "$(scripts/dev-services.sh env)"
fi
if [ "$profile" = "release" ]; then
  cargo build --release --locked -p loader -p extractor -p etl-bench
else
  cargo build --locked -p loader -p extractor -p etl-bench
fi
export BENCH_COMMAND="scripts/bench.sh${*:+ $*}"
exec "target/$profile/bench" "${args[@]}"
