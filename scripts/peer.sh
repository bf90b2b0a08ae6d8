#!/usr/bin/env bash
# The benchmark's peer (issue 22): Kafka Connect with Debezium's JDBC sink, the tool a Kafka user
# would pick instead of our loader, on this machine, without Docker.
#   provision   resolve the worker and the connector into the state dir (idempotent); prints where
#   worker      run one standalone worker in the foreground: this script execs the JVM, so the
#               caller's child pid is the worker's own (bench reads its CPU and memory from /proc)
#   jvms        one line per JVM this machine offers: a name PEER_JVM takes, its java binary and
#               its version
#   java        the java binary PEER_JVM names, and its version
#
# The worker is Kafka Connect from the broker's own release jars (the version in
# services/kafka-pom.xml, listed in services/connect-pom.xml), resolved by Maven from Maven
# Central into $STATE/connect/lib-<version>. The plugin folder $STATE/connect/plugins/debezium-jdbc
# holds debezium-connector-jdbc and the PostgreSQL driver (services/connect-jdbc-pom.xml, resolved
# with services/maven-central-settings.xml: Debezium's parent POM names a repository that is not
# Central) less every jar the worker already has: a second Jackson or Kafka client in the plugin
# folder breaks the connector's tasks.
#
# The worker (standalone mode: a sink keeps its offsets in its consumer group either way) reads
# KAFKA_BROKERS, listens for its REST API on 127.0.0.1:CONNECT_PORT, converts keys and values with
# JsonConverter (schemas.enable=true), lets connectors override their consumer's settings
# (connector.client.config.override.policy=All) and keeps its files and log in CONNECT_WORKER_DIR.
# Its JVM settings are Kafka's own scripts' (connect-standalone.sh and kafka-run-class.sh) unless
# PEER_HEAP_OPTS / PEER_JVM_OPTS say otherwise; PEER_WORKER_PROPS (lines of NAME=VALUE) is added to
# its properties.
#
# Environment: ETL_SERVICES_DIR (state, default <repo>/.services), KAFKA_BROKERS (localhost:9092),
# CONNECT_PORT (38083), CONNECT_WORKER_DIR ($STATE/connect/worker-$CONNECT_PORT), PEER_JVM (a name
# from `jvms`, e.g. temurin; `newest`; a JAVA_HOME; a java binary; default: java on PATH), PEER_HEAP_OPTS
# (-Xms256M -Xmx2G), PEER_JVM_OPTS (Kafka's G1 settings), PEER_WORKER_PROPS.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${ETL_SERVICES_DIR:-$ROOT/.services}"
SERVICES="$ROOT/scripts/services"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$SERVICES/kafka-pom.xml")"
CONNECT_HOME="$STATE/connect"
CONNECT_LIB="$CONNECT_HOME/lib-$KAFKA_VERSION"
PLUGINS="$CONNECT_HOME/plugins"
PLUGIN="$PLUGINS/debezium-jdbc"
CONNECT_PORT="${CONNECT_PORT:-38083}"
WORKER_DIR="${CONNECT_WORKER_DIR:-$CONNECT_HOME/worker-$CONNECT_PORT}"
PEER_HEAP_OPTS="${PEER_HEAP_OPTS:--Xms256M -Xmx2G}"
PEER_JVM_OPTS="${PEER_JVM_OPTS:--server -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:InitiatingHeapOccupancyPercent=35 -XX:+ExplicitGCInvokesConcurrent -XX:MaxInlineLevel=15 -Djava.awt.headless=true}"

log() { printf '[peer] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

# The POMs', the settings' and this script's digest: a changed version or rule resolves again.
stamp() { cat "${BASH_SOURCE[0]}" "$SERVICES/kafka-pom.xml" "$SERVICES/connect-pom.xml" "$SERVICES/connect-jdbc-pom.xml" "$SERVICES/maven-central-settings.xml" | sha256sum | cut -d' ' -f1; }

# An artifact's name without its version: jackson-core-2.19.0.jar -> jackson-core.
artifact() { basename "$1" .jar | sed -E 's/-[0-9][0-9A-Za-z.]*(-[A-Za-z0-9.]+)*$//'; }

provision() {
  local want
  want="$(stamp)"
  if [ "$(cat "$CONNECT_HOME/.complete" 2>/dev/null)" = "$want" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn is required to resolve Kafka Connect from Maven Central (Debian: apt-get install maven)"
  log "resolving Kafka Connect $KAFKA_VERSION and Debezium's JDBC sink from Maven Central into $CONNECT_HOME"
  rm -rf "$CONNECT_LIB" "$PLUGINS"
  mkdir -p "$CONNECT_LIB" "$PLUGIN"
  local mvn=(mvn -q -B -Dstyle.color=never -s "$SERVICES/maven-central-settings.xml" dependency:copy-dependencies -DincludeScope=runtime)
  "${mvn[@]}" -f "$SERVICES/connect-pom.xml" -Dkafka.version="$KAFKA_VERSION" -DoutputDirectory="$CONNECT_LIB" >&2 \
    || die "Maven could not resolve Kafka Connect $KAFKA_VERSION"
  "${mvn[@]}" -f "$SERVICES/connect-jdbc-pom.xml" -DoutputDirectory="$PLUGIN" >&2 \
    || die "Maven could not resolve debezium-connector-jdbc"
  # Out: a jar the worker has byte for byte, and any Jackson, SLF4J or Kafka jar the worker has at
  # whatever version (the classes the worker and its plugins share). In: other APIs at another
  # version than the worker's (jaxb-runtime 4 needs its jakarta.xml.bind-api 4, not the worker's 3).
  local provided jar name removed=()
  provided="$(for jar in "$CONNECT_LIB"/*.jar; do artifact "$jar"; done | sort -u)"
  for jar in "$PLUGIN"/*.jar; do
    name="$(artifact "$jar")"
    if [ -f "$CONNECT_LIB/$(basename "$jar")" ] \
      || { grep -qxF "$name" <<<"$provided" && [[ "$name" =~ ^(jackson-|slf4j-|kafka-|connect-) ]]; }; then
      removed+=("$(basename "$jar")")
      rm -f "$jar"
    fi
  done
  log "left out of the plugin folder (the worker has them): ${removed[*]:-none}"
  ls "$PLUGIN"/debezium-connector-jdbc-*.jar "$PLUGIN"/postgresql-*.jar >/dev/null 2>&1 \
    || die "the plugin folder lacks the connector or the PostgreSQL driver"
  printf '%s' "$want" >"$CONNECT_HOME/.complete"
}

# name<TAB>java binary<TAB>version (the JDK's `release` file, else `java -version`), for every
# JVM under /usr/lib/jvm and then the one on PATH as `default`.
jvms() {
  local d
  for d in /usr/lib/jvm/*/; do
    d="${d%/}"
    [ -L "$d" ] && continue
    [ -x "$d/bin/java" ] || continue
    printf '%s\t%s\t%s\n' "$(basename "$d")" "$d/bin/java" "$(java_version "$d/bin/java")"
  done
  if command -v java >/dev/null; then
    d="$(readlink -f "$(command -v java)")"
    printf 'default\t%s\t%s\n' "$d" "$(java_version "$d")"
  fi
}

java_version() {
  local release
  release="$(dirname "$(dirname "$1")")/release"
  if [ -f "$release" ]; then
    sed -n 's/^JAVA_RUNTIME_VERSION="\(.*\)"/\1/p' "$release"
  else
    "$1" -version 2>&1 | sed -n '1s/.*version "\(.*\)".*/\1/p'
  fi
}

# The java binary PEER_JVM names: empty or `default` for java on PATH, `newest` for the highest
# version `jvms` lists, a name (or part of one) from `jvms`, a JAVA_HOME or a java binary.
java_bin() {
  local want="${PEER_JVM:-}"
  if [ -z "$want" ] || [ "$want" = "default" ]; then
    command -v java >/dev/null || die "java is required to run Kafka Connect (Debian: apt-get install default-jre-headless)"
    readlink -f "$(command -v java)"
    return
  fi
  if [ -x "$want" ] && [ -f "$want" ]; then printf '%s' "$want"; return; fi
  if [ -x "$want/bin/java" ]; then printf '%s' "$want/bin/java"; return; fi
  local found
  if [ "$want" = "newest" ]; then
    found="$(jvms | sort -t$'\t' -k3,3V | tail -n 1 | cut -f2)"
  else
    found="$(jvms | awk -F'\t' -v w="$want" 'index($1, w) { print $2; exit }')"
  fi
  [ -n "$found" ] || die "PEER_JVM=$want: no such JVM (scripts/peer.sh jvms lists them)"
  printf '%s' "$found"
}

worker() {
  provision
  local java
  java="$(java_bin)"
  mkdir -p "$WORKER_DIR/logs"
  cat >"$WORKER_DIR/worker.properties" <<EOF
# Written by scripts/peer.sh: one standalone Kafka Connect worker for the benchmark's peer step.
bootstrap.servers=${KAFKA_BROKERS:-localhost:9092}
listeners=http://127.0.0.1:$CONNECT_PORT
key.converter=org.apache.kafka.connect.json.JsonConverter
value.converter=org.apache.kafka.connect.json.JsonConverter
key.converter.schemas.enable=true
value.converter.schemas.enable=true
offset.storage.file.filename=$WORKER_DIR/offsets
offset.flush.interval.ms=10000
plugin.path=$PLUGINS
connector.client.config.override.policy=All
EOF
  if [ -n "${PEER_WORKER_PROPS:-}" ]; then
    printf '# PEER_WORKER_PROPS\n%s\n' "$PEER_WORKER_PROPS" >>"$WORKER_DIR/worker.properties"
  fi
  log "starting a Kafka Connect $KAFKA_VERSION worker on 127.0.0.1:$CONNECT_PORT with $java"
  # shellcheck disable=SC2086 # the options are word lists, as in Kafka's own scripts
  exec "$java" $PEER_HEAP_OPTS $PEER_JVM_OPTS \
    -Dlog4j2.configurationFile="$SERVICES/log4j2.properties" -Dkafka.logs.dir="$WORKER_DIR/logs" \
    -cp "$CONNECT_LIB/*" org.apache.kafka.connect.cli.ConnectStandalone "$WORKER_DIR/worker.properties"
}

case "${1:-}" in
  provision)
    provision
    printf 'lib %s\nplugins %s\n' "$CONNECT_LIB" "$PLUGINS"
    ;;
  worker) worker ;;
  jvms) jvms ;;
  java)
    java="$(java_bin)"
    printf '%s %s\n' "$java" "$(java_version "$java")"
    ;;
  *)
    echo "usage: $0 provision|worker|jvms|java" >&2
    exit 2
    ;;
esac
