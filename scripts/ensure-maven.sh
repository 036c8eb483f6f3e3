#!/usr/bin/env bash
# Makes Maven available on a bare Debian machine: labctl resolves the images' jars (Kafka,
# Flink's connectors) with the host's Maven, so that the user's Maven settings and mirror apply.
# Installs Debian's `maven` package (it brings a JRE) when `mvn` is missing.
set -euo pipefail
command -v mvn >/dev/null 2>&1 && exit 0
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }
echo "[ensure-maven] installing maven from Debian's archive" >&2
as_root apt-get update -qq
DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq maven >/dev/null
mvn -v | head -n 1 >&2
