#!/bin/sh
# Starts tansu with one listener, advertised under the broker's name on the lab's network.
set -eu
exec /usr/local/bin/tansu broker \
  --storage-engine "${STORAGE_ENGINE:-sqlite:///var/lib/tansu/tansu.db}" \
  --listener-url "${LISTENER_URL:-tcp://0.0.0.0:9092}" \
  --advertised-listener-url "${ADVERTISED_LISTENER_URL:-tcp://broker:9092}" \
  "$@"
