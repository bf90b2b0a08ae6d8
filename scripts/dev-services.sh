#!/usr/bin/env bash
# Real Kafka and real PostgreSQL on this machine, without Docker:
#   up       install what is missing, start what is not running, wait until both answer
#   down     stop both (data is kept)
#   status   one line per service; exit 0 if both run, 3 otherwise
#   env      print the export lines for KAFKA_BROKERS and DATABASE_URL (and the TLS test settings)
#   start-kafka | stop-kafka | start-postgres | stop-postgres | start-s3 | stop-s3
#            one service alone, data kept (for fault tests that stop a service mid-load)
#   crash-postgres      an immediate shutdown (a crash: unflushed WAL is lost)
#   slow-wal-postgres   the WAL writer slowed to 10 s until the next start (widens what a crash loses)
#
# Kafka: a single-node KRaft broker from the release jars, resolved by Maven from Maven Central
# into the state dir, run with the machine's Java. PostgreSQL: Debian's packages (apt-get installs
# them when missing), our own cluster in the state dir. Everything is idempotent.
#
# TLS, for the transport tests: a throwaway CA and a `localhost` certificate in $STATE/tls
# (openssl). PostgreSQL also accepts TLS on its port (ssl=on; plain connections still work);
# Kafka has a second listener on KAFKA_TLS_PORT speaking SASL_SSL with SCRAM-SHA-512 for user
# `etl` (password generated into $STATE/tls/scram-password). `env` prints where they are.
#
# S3: `moto_server` (PyPI moto[server], pinned in scripts/services/s3-requirements.txt with
# pyarrow, the independent reader the tests check objects with) in a virtualenv in the state dir,
# on S3_PORT. It keeps objects in memory, so `stop-s3` freezes it (SIGSTOP: requests hang, as
# with a store that stopped answering) and `start-s3` thaws it with its objects intact.
#
# Environment: ETL_SERVICES_DIR (state, default <repo>/.services), KAFKA_PORT (9092),
# KAFKA_CONTROLLER_PORT (9093), KAFKA_TLS_PORT (9094), PG_PORT (5432), S3_PORT (9000),
# KAFKA_HEAP (512m).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
STATE="${ETL_SERVICES_DIR:-$ROOT/.services}"
KAFKA_PORT="${KAFKA_PORT:-9092}"
KAFKA_CONTROLLER_PORT="${KAFKA_CONTROLLER_PORT:-9093}"
PG_PORT="${PG_PORT:-5432}"
KAFKA_TLS_PORT="${KAFKA_TLS_PORT:-9094}"
TLS="$STATE/tls"
SCRAM_USER="etl"
KAFKA_HEAP="${KAFKA_HEAP:-512m}"
POM="$ROOT/scripts/services/kafka-pom.xml"
KAFKA_VERSION="$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$POM")"
KAFKA_HOME="$STATE/kafka"
KAFKA_LIB="$KAFKA_HOME/lib-$KAFKA_VERSION"
KAFKA_DATA="$KAFKA_HOME/data"
KAFKA_PID="$KAFKA_HOME/kafka.pid"
PG_USER_DB="etl"
S3_PORT="${S3_PORT:-9000}"
PYENV="$STATE/python"
S3_HOME="$STATE/s3"
S3_PID="$S3_HOME/moto.pid"
S3_REQUIREMENTS="$ROOT/scripts/services/s3-requirements.txt"

log() { printf '[dev-services] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# ---------------------------------------------------------------- TLS material

# A CA, a server certificate for localhost signed by it, and a second CA that signed nothing
# (the tests use it to prove that verification is on). Made once; kept with the state.
tls_setup() {
  [ -f "$TLS/.complete" ] && return 0
  command -v openssl >/dev/null || die "openssl is required for the TLS test material (Debian: apt-get install openssl)"
  log "creating a throwaway CA and a localhost certificate in $TLS"
  rm -rf "$TLS"
  mkdir -p "$TLS"
  (
    cd "$TLS"
    # CA extensions spelled out (not left to the distribution's openssl.cnf): rustls, which
    # sqlx uses, accepts only proper v3 CA and end-entity certificates.
    local ext=(-addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign")
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=etl dev CA" "${ext[@]}" \
      -keyout ca.key -out ca.pem 2>/dev/null
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=unrelated CA" "${ext[@]}" \
      -keyout other-ca.key -out other-ca.pem 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server.key -out server.csr 2>/dev/null
    printf '%s\n' 'subjectAltName=DNS:localhost,IP:127.0.0.1' 'basicConstraints=critical,CA:FALSE' \
      'keyUsage=critical,digitalSignature,keyEncipherment' 'extendedKeyUsage=serverAuth' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 3650 \
      -extfile server.ext -out server.crt 2>/dev/null
    # Kafka's PEM keystore: a PKCS#8 key followed by the certificate chain (unencrypted: the
    # JDK cannot read openssl's PBES2-encrypted keys, and the file is as private as a password).
    openssl pkcs8 -topk8 -nocrypt -in server.key -out kafka.key
    cat kafka.key server.crt ca.pem >kafka-keystore.pem
    openssl rand -hex 16 >scram-password
    chmod 600 ca.key other-ca.key server.key kafka.key kafka-keystore.pem scram-password
  ) || die "creating the TLS material failed"
  touch "$TLS/.complete"
}

# ---------------------------------------------------------------- PostgreSQL

pg_bindir() {
  local d
  d="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  [ -n "$d" ] && [ -x "$d/pg_ctl" ] && printf '%s' "$d"
}

pg_install() {
  if [ -n "$(pg_bindir)" ]; then return 0; fi
  command -v apt-get >/dev/null || die "PostgreSQL is not installed and apt-get is not available"
  log "installing PostgreSQL from Debian's packages"
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  # We run our own cluster: keep the package from creating and starting one on our port.
  $sudo mkdir -p /etc/postgresql-common
  if ! grep -qs '^create_main_cluster' /etc/postgresql-common/createcluster.conf; then
    echo 'create_main_cluster = false' | $sudo tee -a /etc/postgresql-common/createcluster.conf >/dev/null
  fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    -o Dpkg::Options::=--force-confold postgresql >/dev/null
  [ -n "$(pg_bindir)" ] || die "PostgreSQL install finished but no server binaries were found"
}

# PostgreSQL refuses to run as root: as root we run it as the package's `postgres` user.
pg_as() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

pg_dirs() {
  PG_BASE="$STATE/postgres"
  if [ "$(id -u)" -eq 0 ]; then
    mkdir -p "$PG_BASE"
    chown postgres: "$PG_BASE"
    # The postgres user must reach the data dir; a repo under an unreadable home would stop it.
    if ! runuser -u postgres -- test -x "$PG_BASE"; then
      PG_BASE="/var/tmp/etl-services-pg-$(printf '%s' "$STATE" | md5sum | cut -c1-12)"
      mkdir -p "$PG_BASE"
      chown postgres: "$PG_BASE"
    fi
  else
    mkdir -p "$PG_BASE"
  fi
  PGDATA_DIR="$PG_BASE/data"
  PG_SOCK="$PG_BASE/sock"
  PG_LOG="$PG_BASE/postgres.log"
}

pg_running() {
  local bin
  bin="$(pg_bindir)" || return 1
  pg_dirs
  [ -f "$PGDATA_DIR/postmaster.pid" ] && pg_as "$bin/pg_ctl" -D "$PGDATA_DIR" status >/dev/null 2>&1
}

psql_admin() {
  pg_as "$(pg_bindir)/psql" -X -q -v ON_ERROR_STOP=1 -h "$PG_SOCK" -p "$PG_PORT" -U postgres -d postgres "$@"
}

# The server's certificate and key live in the data dir, owned by the server's user (it refuses
# a key others can read). Prints "changed" when it replaced them.
pg_tls_files() {
  tls_setup
  local f
  local changed=""
  for f in server.crt server.key; do
    if ! cmp -s "$TLS/$f" "$PGDATA_DIR/$f"; then
      pg_as install -m 600 /dev/null "$PGDATA_DIR/$f"
      pg_as tee "$PGDATA_DIR/$f" <"$TLS/$f" >/dev/null
      changed="changed"
    fi
  done
  printf '%s' "$changed"
}

# ssl=on also for a cluster that was already running (started by an older version of this script,
# or whose certificate was just replaced): ssl and its files are reloadable, no restart needed.
pg_tls_on() {
  local changed
  changed="$(pg_tls_files)"
  if [ "$(psql_admin -Atc 'SHOW ssl')" = "on" ] && [ -z "$changed" ]; then return 0; fi
  log "PostgreSQL: turning TLS on / loading its certificate (a reload, no restart)"
  psql_admin -c "ALTER SYSTEM SET ssl = on" -c "SELECT pg_reload_conf()" >/dev/null
  local i
  for i in $(seq 1 20); do
    [ "$(psql_admin -Atc 'SHOW ssl')" = "on" ] && return 0
    sleep 0.5
  done
  tail -n 5 "$PG_LOG" >&2 2>/dev/null || true
  die "PostgreSQL did not turn TLS on (see $PG_LOG)"
}

start_postgres() {
  pg_install
  local bin
  bin="$(pg_bindir)"
  pg_dirs
  if pg_running; then
    log "PostgreSQL already running (port $PG_PORT, data $PGDATA_DIR)"
  else
    if port_open "$PG_PORT"; then
      die "port $PG_PORT is taken by something that is not our PostgreSQL; set PG_PORT or stop it"
    fi
    if [ ! -f "$PGDATA_DIR/PG_VERSION" ]; then
      log "initialising a PostgreSQL cluster in $PGDATA_DIR"
      pg_as mkdir -p "$PGDATA_DIR"
      pg_as "$bin/initdb" -D "$PGDATA_DIR" -U postgres --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 >/dev/null
    fi
    pg_as mkdir -p "$PG_SOCK"
    pg_tls_files >/dev/null
    # A slowed WAL writer (slow-wal-postgres) never outlives the test that asked for it.
    [ -f "$PGDATA_DIR/postgresql.auto.conf" ] && pg_as sed -i '/^wal_writer_delay/d' "$PGDATA_DIR/postgresql.auto.conf"
    log "starting PostgreSQL on localhost:$PG_PORT (TLS accepted)"
    pg_as "$bin/pg_ctl" -D "$PGDATA_DIR" -l "$PG_LOG" -w -t 60 start \
      -o "-p $PG_PORT -k $PG_SOCK -c listen_addresses=localhost -c max_connections=200 -c shared_buffers=128MB -c ssl=on" >/dev/null \
      || { tail -n 20 "$PG_LOG" >&2 || true; die "PostgreSQL did not start"; }
  fi
  local i
  for i in $(seq 1 60); do
    pg_as "$bin/pg_isready" -q -h "$PG_SOCK" -p "$PG_PORT" && break
    [ "$i" -eq 60 ] && die "PostgreSQL did not become ready"
    sleep 1
  done
  pg_tls_on
  # The application's role and database. CREATEDB: the tests make one database per test;
  # CREATEROLE: the security tests make roles with known passwords and least privileges.
  psql_admin -c "DO \$\$ BEGIN
      IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'etl') THEN
        CREATE ROLE etl LOGIN PASSWORD 'etl' CREATEDB CREATEROLE;
      ELSE
        ALTER ROLE etl CREATEDB CREATEROLE;
      END IF; END \$\$;"
  if [ -z "$(psql_admin -Atc "SELECT 1 FROM pg_database WHERE datname = '$PG_USER_DB'")" ]; then
    psql_admin -c "CREATE DATABASE $PG_USER_DB OWNER etl"
  fi
  log "PostgreSQL ready: postgres://etl:***@localhost:$PG_PORT/$PG_USER_DB"
}

# A clean shutdown, or with "immediate" what a crash does: no checkpoint, and WAL not yet
# flushed is lost (recovery replays the rest at the next start).
stop_postgres() {
  local mode="${1:-fast}" bin
  bin="$(pg_bindir)" || { log "PostgreSQL not installed"; return 0; }
  if pg_running; then
    if [ "$mode" = immediate ]; then log "crashing PostgreSQL (immediate shutdown)"; else log "stopping PostgreSQL"; fi
    pg_as "$bin/pg_ctl" -D "$PGDATA_DIR" -m "$mode" -w -t 60 stop >/dev/null
  else
    log "PostgreSQL not running"
  fi
}

# The WAL writer slowed to its 10 s maximum: an asynchronous commit then waits that long to reach
# the disk, so a crash (crash-postgres) takes back seconds of them. The next start undoes it.
slow_wal_postgres() {
  pg_dirs
  psql_admin -c "ALTER SYSTEM SET wal_writer_delay = '10s'" -c "SELECT pg_reload_conf()" >/dev/null
  log "PostgreSQL's WAL writer slowed to 10 s"
}

# ---------------------------------------------------------------- Kafka

kafka_cp() { printf '%s/*' "$KAFKA_LIB"; }

kafka_resolve() {
  command -v java >/dev/null || die "java is required to run Kafka (Debian: apt-get install default-jre-headless)"
  if [ -f "$KAFKA_LIB/.complete" ]; then return 0; fi
  command -v mvn >/dev/null || die "mvn is required to resolve Kafka from Maven Central (Debian: apt-get install maven)"
  log "resolving Apache Kafka $KAFKA_VERSION from Maven Central into $KAFKA_LIB"
  rm -rf "$KAFKA_LIB"
  mkdir -p "$KAFKA_LIB"
  mvn -q -B -Dstyle.color=never -f "$POM" dependency:copy-dependencies -DincludeScope=runtime -DoutputDirectory="$KAFKA_LIB" >&2 \
    || die "Maven could not resolve Kafka $KAFKA_VERSION"
  touch "$KAFKA_LIB/.complete"
}

kafka_pid_alive() {
  [ -f "$KAFKA_PID" ] && kill -0 "$(cat "$KAFKA_PID")" 2>/dev/null
}

kafka_java() {
  java -Xmx256m -Dlog4j2.configurationFile="$ROOT/scripts/services/log4j2.properties" \
    -Dkafka.logs.dir="$KAFKA_HOME/logs" -cp "$(kafka_cp)" "$@"
}

kafka_ready() {
  timeout 20 java -Xmx128m -Dlog4j2.configurationFile="$ROOT/scripts/services/log4j2.properties" \
    -Dkafka.logs.dir="$KAFKA_HOME/logs/tools" -cp "$(kafka_cp)" org.apache.kafka.tools.TopicCommand \
    --bootstrap-server "localhost:$KAFKA_PORT" --list >/dev/null 2>&1
}

write_kafka_config() {
  cat >"$KAFKA_HOME/server.properties" <<EOF
# Written by scripts/dev-services.sh: a single-node KRaft broker for development and tests.
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:$KAFKA_CONTROLLER_PORT
listeners=PLAINTEXT://127.0.0.1:$KAFKA_PORT,CONTROLLER://127.0.0.1:$KAFKA_CONTROLLER_PORT,SASL_SSL://127.0.0.1:$KAFKA_TLS_PORT
advertised.listeners=PLAINTEXT://localhost:$KAFKA_PORT,SASL_SSL://localhost:$KAFKA_TLS_PORT
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL
# The TLS listener: SCRAM-SHA-512 over TLS, the certificate from a PEM keystore.
sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=$TLS/kafka-keystore.pem
log.dirs=$KAFKA_DATA
num.partitions=1
offsets.topic.replication.factor=1
offsets.topic.num.partitions=10
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
group.initial.rebalance.delay.ms=0
auto.create.topics.enable=true
log.retention.hours=168
# Kafka's default record limit (about 1 MB) is left as it is, as on a cluster users bring: the
# topics the project creates carry their own max.message.bytes (contract::MAX_MESSAGE_BYTES).
EOF
}

start_kafka() {
  kafka_resolve
  mkdir -p "$KAFKA_HOME/logs" "$KAFKA_DATA"
  if kafka_pid_alive; then
    log "Kafka already running (pid $(cat "$KAFKA_PID"), port $KAFKA_PORT)"
  else
    if port_open "$KAFKA_PORT" || port_open "$KAFKA_CONTROLLER_PORT" || port_open "$KAFKA_TLS_PORT"; then
      die "port $KAFKA_PORT, $KAFKA_CONTROLLER_PORT or $KAFKA_TLS_PORT is taken by something that is not our Kafka; set KAFKA_PORT/KAFKA_CONTROLLER_PORT/KAFKA_TLS_PORT or stop it"
    fi
    tls_setup
    write_kafka_config
    if [ ! -f "$KAFKA_DATA/meta.properties" ]; then
      local cluster_id
      cluster_id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null | tail -n 1)"
      log "formatting KRaft storage (cluster $cluster_id)"
      kafka_java kafka.tools.StorageTool format -t "$cluster_id" -c "$KAFKA_HOME/server.properties" --standalone \
        --add-scram "$(scram_credential)" >/dev/null \
        || die "formatting Kafka storage failed"
      scram_mark
    fi
    log "starting Kafka $KAFKA_VERSION on localhost:$KAFKA_PORT"
    nohup java -Xmx"$KAFKA_HEAP" -Xms"$KAFKA_HEAP" -XX:+UseG1GC -Djava.awt.headless=true \
      -Dlog4j2.configurationFile="$ROOT/scripts/services/log4j2.properties" -Dkafka.logs.dir="$KAFKA_HOME/logs" \
      -cp "$(kafka_cp)" kafka.Kafka "$KAFKA_HOME/server.properties" >"$KAFKA_HOME/logs/stdout.log" 2>&1 &
    echo "$!" >"$KAFKA_PID"
  fi
  local deadline=$((SECONDS + 90))
  until kafka_ready; do
    if ! kafka_pid_alive; then
      tail -n 30 "$KAFKA_HOME/logs/server.log" "$KAFKA_HOME/logs/stdout.log" >&2 2>/dev/null || true
      die "Kafka exited during start-up"
    fi
    if [ "$SECONDS" -ge "$deadline" ]; then
      tail -n 30 "$KAFKA_HOME/logs/server.log" >&2 2>/dev/null || true
      die "Kafka did not answer within 90 s"
    fi
    sleep 1
  done
  # The SCRAM user of the TLS listener: made at format time for a fresh data dir; added here to
  # one formatted by an older version of this script, or after the password was regenerated.
  if ! scram_marked; then
    log "adding the SCRAM-SHA-512 user $SCRAM_USER"
    kafka_java kafka.admin.ConfigCommand --bootstrap-server "localhost:$KAFKA_PORT" --alter \
      --entity-type users --entity-name "$SCRAM_USER" --add-config "$(scram_credential | sed 's/name=[^,]*,//')" >/dev/null \
      || die "creating the SCRAM user failed"
    scram_mark
  fi
  if port_open "$KAFKA_TLS_PORT"; then
    log "Kafka ready: localhost:$KAFKA_PORT (SASL_SSL on localhost:$KAFKA_TLS_PORT)"
  else
    # Started by an older version of this script: listeners are fixed at start.
    log "warning: Kafka (pid $(cat "$KAFKA_PID")) has no SASL_SSL listener on $KAFKA_TLS_PORT;" \
      "the TLS tests need one: '$0 stop-kafka && $0 up' restarts it with it"
    log "Kafka ready: localhost:$KAFKA_PORT"
  fi
}

# Kafka's SCRAM credential for the TLS listener's user, as `kafka-storage format --add-scram` and
# (without name=) `kafka-configs --add-config` take it.
scram_credential() {
  printf 'SCRAM-SHA-512=[name=%s,iterations=8192,password=%s]' "$SCRAM_USER" "$(cat "$TLS/scram-password")"
}

# Which cluster and password the SCRAM user was last set for: set again only when either changed.
scram_stamp() {
  printf '%s %s' "$(sed -n 's/^cluster.id=//p' "$KAFKA_DATA/meta.properties" 2>/dev/null)" \
    "$(sha256sum "$TLS/scram-password" | cut -d' ' -f1)"
}
scram_marked() { [ "$(cat "$KAFKA_HOME/scram.stamp" 2>/dev/null)" = "$(scram_stamp)" ]; }
scram_mark() { scram_stamp >"$KAFKA_HOME/scram.stamp"; }

stop_kafka() {
  if ! kafka_pid_alive; then
    log "Kafka not running"
    rm -f "$KAFKA_PID"
    return 0
  fi
  local pid
  pid="$(cat "$KAFKA_PID")"
  log "stopping Kafka (pid $pid)"
  kill -TERM "$pid" 2>/dev/null || true
  local i
  for i in $(seq 1 60); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.5
  done
  if kill -0 "$pid" 2>/dev/null; then
    log "Kafka did not stop in 30 s; killing it"
    kill -KILL "$pid" 2>/dev/null || true
  fi
  rm -f "$KAFKA_PID"
}

# ---------------------------------------------------------------- S3 (moto_server)

python_setup() {
  local stamp
  stamp="$(sha256sum "$S3_REQUIREMENTS" | cut -d' ' -f1)"
  [ "$(cat "$PYENV/.complete" 2>/dev/null)" = "$stamp" ] && return 0
  command -v python3 >/dev/null || die "python3 is required for the S3 server (Debian: apt-get install python3 python3-venv)"
  log "installing moto[server], pyarrow and the lake engines (deltalake, polars, duckdb, pyspark) into $PYENV (PyPI)"
  rm -rf "$PYENV"
  python3 -m venv "$PYENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
  "$PYENV/bin/pip" install --quiet --disable-pip-version-check -r "$S3_REQUIREMENTS" \
    || die "pip install of $S3_REQUIREMENTS failed"
  printf '%s' "$stamp" >"$PYENV/.complete"
}

s3_pid_alive() { [ -f "$S3_PID" ] && kill -0 "$(cat "$S3_PID")" 2>/dev/null; }

start_s3() {
  python_setup
  mkdir -p "$S3_HOME"
  if s3_pid_alive; then
    kill -CONT "$(cat "$S3_PID")" 2>/dev/null || true
  else
    port_open "$S3_PORT" && die "port $S3_PORT is taken by another process; set S3_PORT"
    log "starting moto_server on localhost:$S3_PORT"
    setsid "$PYENV/bin/moto_server" -H 127.0.0.1 -p "$S3_PORT" >"$S3_HOME/moto.log" 2>&1 </dev/null &
    echo $! >"$S3_PID"
  fi
  local i
  for i in $(seq 1 60); do
    port_open "$S3_PORT" && { log "S3 ready: http://localhost:$S3_PORT"; return 0; }
    s3_pid_alive || die "moto_server exited; see $S3_HOME/moto.log"
    sleep 0.5
  done
  die "moto_server did not open port $S3_PORT in 30 s; see $S3_HOME/moto.log"
}

stop_s3() {
  if s3_pid_alive; then
    log "freezing moto_server (pid $(cat "$S3_PID")); start-s3 thaws it"
    kill -STOP "$(cat "$S3_PID")"
  else
    log "S3 not running"
  fi
}

down_s3() {
  if s3_pid_alive; then
    local pid
    pid="$(cat "$S3_PID")"
    log "stopping moto_server (pid $pid)"
    kill -CONT "$pid" 2>/dev/null || true
    kill -TERM "$pid" 2>/dev/null || true
  fi
  rm -f "$S3_PID"
}

# ---------------------------------------------------------------- commands

print_env() {
  printf 'export KAFKA_BROKERS=localhost:%s\n' "$KAFKA_PORT"
  printf 'export DATABASE_URL=postgres://etl:etl@localhost:%s/%s\n' "$PG_PORT" "$PG_USER_DB"
  # For the transport tests (loader/tests/tls.rs).
  printf 'export ETL_TEST_KAFKA_TLS_BROKERS=localhost:%s\n' "$KAFKA_TLS_PORT"
  printf 'export ETL_TEST_TLS_CA=%s\n' "$TLS/ca.pem"
  printf 'export ETL_TEST_TLS_OTHER_CA=%s\n' "$TLS/other-ca.pem"
  printf 'export ETL_TEST_KAFKA_SCRAM_USER=%s\n' "$SCRAM_USER"
  printf 'export ETL_TEST_KAFKA_SCRAM_PASSWORD_FILE=%s\n' "$TLS/scram-password"
  # For the object-storage tests: moto's endpoint and the independent reader.
  printf 'export ETL_TEST_S3_ENDPOINT=http://localhost:%s\n' "$S3_PORT"
  printf 'export ETL_TEST_PYTHON=%s\n' "$PYENV/bin/python"
}

status() {
  local rc=0
  if pg_running; then log "postgres: running on localhost:$PG_PORT"; else log "postgres: not running"; rc=3; fi
  if kafka_pid_alive; then log "kafka: running on localhost:$KAFKA_PORT (pid $(cat "$KAFKA_PID"))"; else log "kafka: not running"; rc=3; fi
  if s3_pid_alive; then log "s3: running on localhost:$S3_PORT (pid $(cat "$S3_PID"))"; else log "s3: not running"; rc=3; fi
  return "$rc"
}

cmd="${1:-}"
case "$cmd" in
  up)
    mkdir -p "$STATE"
    start_postgres
    start_kafka
    start_s3
    print_env
    ;;
  down)
    down_s3
    stop_kafka
    stop_postgres
    ;;
  status) status ;;
  env) print_env ;;
  start-kafka) mkdir -p "$STATE"; start_kafka ;;
  stop-kafka) stop_kafka ;;
  start-postgres) mkdir -p "$STATE"; start_postgres ;;
  stop-postgres) stop_postgres ;;
  crash-postgres) stop_postgres immediate ;;
  slow-wal-postgres) slow_wal_postgres ;;
  start-s3) mkdir -p "$STATE"; start_s3 ;;
  stop-s3) stop_s3 ;;
  *)
    echo "usage: $0 up|down|status|env|start-kafka|stop-kafka|start-postgres|stop-postgres|crash-postgres|slow-wal-postgres|start-s3|stop-s3" >&2
    exit 2
    ;;
esac
