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

# SASL_SSL listeners (broker.sasl_ssl_listener; labctl sets KAFKA_TLS_NAMES): a CA made on the
# first start and kept in the volume, and a server certificate it signs for those names, made
# again when they change. Kafka reads key and chain from one PEM file (ssl.keystore.type=PEM).
if [ -n "${KAFKA_TLS_NAMES:-}" ]; then
  tls=/var/lib/kafka/tls
  mkdir -p "$tls" && chmod 0700 "$tls"
  if [ ! -s "$tls/ca.key" ] || [ ! -s "$tls/ca.pem" ]; then
    echo "[labctl-broker] making the CA of the TLS listeners" >&2
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
      -subj "/CN=labctl broker CA ${KAFKA_CLUSTER_ID}" -keyout "$tls/ca.key" -out "$tls/ca.pem" \
      -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
    rm -f "$tls/server.pem"
  fi
  if [ ! -s "$tls/server.pem" ] || [ "$(cat "$tls/names" 2>/dev/null)" != "$KAFKA_TLS_NAMES" ]; then
    echo "[labctl-broker] making the server certificate for ${KAFKA_TLS_NAMES}" >&2
    ext="$(mktemp)"
    printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth\nbasicConstraints=critical,CA:FALSE\n' "$KAFKA_TLS_NAMES" >"$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=broker" \
      -keyout "$tls/server.key" -out "$tls/server.csr" 2>/dev/null
    openssl x509 -req -in "$tls/server.csr" -CA "$tls/ca.pem" -CAkey "$tls/ca.key" -CAcreateserial -CAserial "$tls/ca.srl" \
      -days 825 -extfile "$ext" -out "$tls/server.crt" 2>/dev/null
    cat "$tls/server.key" "$tls/server.crt" "$tls/ca.pem" >"$tls/server.pem.new"
    chmod 0600 "$tls/server.pem.new" && mv "$tls/server.pem.new" "$tls/server.pem"
    rm -f "$tls/server.key" "$tls/server.csr" "$tls/server.crt" "$ext"
    printf '%s' "$KAFKA_TLS_NAMES" >"$tls/names"
  fi
  chmod 0644 "$tls/ca.pem"
fi

if [ ! -f "$data/meta.properties" ]; then
  echo "[labctl-broker] formatting $data for cluster ${KAFKA_CLUSTER_ID}, node ${KAFKA_NODE_ID}" >&2
  # `--cluster-id=ID` in one word: an id may start with `-`, which the parser would take for an option.
  format=(kafka.tools.StorageTool format "--cluster-id=${KAFKA_CLUSTER_ID}" -c "$conf")
  if [ -n "${KAFKA_SCRAM_USER:-}" ]; then
    # The SCRAM user's password comes from the file labctl placed in the container. It reaches
    # the StorageTool through a java @argfile, so neither `ps` nor `docker inspect` shows it.
    password="$(cat /run/secrets/broker-password)"
    if ! [[ "$password" =~ ^[A-Za-z0-9]{16,}$ && "$KAFKA_SCRAM_USER" =~ ^[A-Za-z0-9_-]+$ ]]; then
      echo "[labctl-broker] /run/secrets/broker-password must hold 16 or more letters and digits" >&2
      exit 2
    fi
    argfile="$(mktemp -p /var/lib/kafka .format-args.XXXXXX)"
    trap 'rm -f "$argfile"' EXIT
    {
      printf '%s\n' "${format[@]}"
      for m in SCRAM-SHA-256 SCRAM-SHA-512; do
        printf -- '--add-scram\n%s=[name=%s,password=%s]\n' "$m" "$KAFKA_SCRAM_USER" "$password"
      done
    } >"$argfile"
    java "${java_opts[@]}" "@$argfile"
    rm -f "$argfile"
    trap - EXIT
    unset password
    echo "[labctl-broker] SCRAM-SHA-256 and SCRAM-SHA-512 credentials of user ${KAFKA_SCRAM_USER} created" >&2
  else
    java "${java_opts[@]}" "${format[@]}"
  fi
fi
exec java "${java_opts[@]}" kafka.Kafka "$conf"
