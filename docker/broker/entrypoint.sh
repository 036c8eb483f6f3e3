#!/bin/bash
# One KRaft node (broker and controller). Writes server.properties from the image's base and
# the stack's KAFKA_PROPERTIES (later lines win), formats the storage on the first start only
# (the cluster id then lives in the volume's meta.properties, so a restart keeps every topic
# and offset), and execs the broker so the stop signal reaches the JVM.
set -euo pipefail
: "${KAFKA_CLUSTER_ID:?set by labctl}" "${KAFKA_NODE_ID:?set by labctl}"

data=/var/lib/kafka/data
conf=/var/lib/kafka/server.properties
{
  cat /opt/kafka/config/server-base.properties
  echo "node.id=${KAFKA_NODE_ID}"
  printf '%s\n' "${KAFKA_PROPERTIES:-}"
} >"$conf"

java_opts=(
  ${KAFKA_HEAP_OPTS:--Xms256m -Xmx512m}
  -XX:+UseG1GC -XX:MaxGCPauseMillis=20 -XX:+ExitOnOutOfMemoryError
  -Djava.awt.headless=true -Djava.security.egd=file:/dev/urandom
  -Dlog4j2.configurationFile=/opt/kafka/config/log4j2.properties
  -cp '/opt/kafka/libs/*'
)

if [ ! -f "$data/meta.properties" ]; then
  echo "[labctl-broker] formatting $data for cluster ${KAFKA_CLUSTER_ID}, node ${KAFKA_NODE_ID}" >&2
  java "${java_opts[@]}" kafka.tools.StorageTool format -t "$KAFKA_CLUSTER_ID" -c "$conf"
fi
exec java "${java_opts[@]}" kafka.Kafka "$conf"
