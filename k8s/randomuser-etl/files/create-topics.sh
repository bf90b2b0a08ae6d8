#!/bin/sh
# Creates the pipeline's topics if they are missing (an existing topic is left as it is), with
# the record limit the producers use (etl_common::contract::MAX_MESSAGE_BYTES). Run by the
# chart's topics Job in the apache/kafka image; the Kafka settings are the services' own
# variables. The SASL password goes into a client config on a memory volume, never argv.
#   KAFKA_BROKERS KAFKA_TOPIC KAFKA_DLQ_TOPIC TOPIC_PARTITIONS TOPIC_REPLICATION_FACTOR
#   [KAFKA_SECURITY_PROTOCOL KAFKA_SASL_MECHANISM KAFKA_SASL_USERNAME KAFKA_SASL_PASSWORD_FILE
#    KAFKA_SSL_CA_LOCATION] [KAFKA_TOPICS_CMD (default /opt/kafka/bin/kafka-topics.sh)]
#    [CLIENT_CONFIG (default /tmp/client.properties)]
set -eu
MAX_MESSAGE_BYTES=17825792
topics=${KAFKA_TOPICS_CMD:-/opt/kafka/bin/kafka-topics.sh}
config=${CLIENT_CONFIG:-/tmp/client.properties}

umask 077
: >"$config"
if [ -n "${KAFKA_SECURITY_PROTOCOL:-}" ]; then
  echo "security.protocol=$(printf '%s' "$KAFKA_SECURITY_PROTOCOL" | tr '[:lower:]' '[:upper:]')" >>"$config"
fi
if [ -n "${KAFKA_SASL_MECHANISM:-}" ]; then
  case "$KAFKA_SASL_MECHANISM" in
    PLAIN) module=org.apache.kafka.common.security.plain.PlainLoginModule ;;
    SCRAM-SHA-256|SCRAM-SHA-512) module=org.apache.kafka.common.security.scram.ScramLoginModule ;;
    *) echo "KAFKA_SASL_MECHANISM=$KAFKA_SASL_MECHANISM: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512" >&2; exit 2 ;;
  esac
  password=$(cat "${KAFKA_SASL_PASSWORD_FILE:?KAFKA_SASL_PASSWORD_FILE must name the password file}")
  echo "sasl.mechanism=$KAFKA_SASL_MECHANISM" >>"$config"
  printf '%s\n' "sasl.jaas.config=$module required username=\"${KAFKA_SASL_USERNAME:?}\" password=\"$password\";" >>"$config"
fi
if [ -n "${KAFKA_SSL_CA_LOCATION:-}" ]; then
  printf 'ssl.truststore.type=PEM\nssl.truststore.location=%s\n' "$KAFKA_SSL_CA_LOCATION" >>"$config"
fi

create() {
  "$topics" --bootstrap-server "$KAFKA_BROKERS" --command-config "$config" --create --if-not-exists \
    --topic "$1" --partitions "$2" --replication-factor "$TOPIC_REPLICATION_FACTOR" \
    --config "max.message.bytes=$MAX_MESSAGE_BYTES"
}
create "$KAFKA_TOPIC" "$TOPIC_PARTITIONS"
create "$KAFKA_DLQ_TOPIC" 1
"$topics" --bootstrap-server "$KAFKA_BROKERS" --command-config "$config" --describe --topic "$KAFKA_TOPIC"
