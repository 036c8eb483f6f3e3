#!/usr/bin/env bash
# Installs what building labctl needs besides Rust on a bare Debian machine, when missing:
# OpenSSL's headers and pkg-config, for the Kafka client's TLS and SCRAM (rdkafka's `ssl`
# feature builds librdkafka against the system's OpenSSL). Needs root or sudo for that.
set -euo pipefail

log() { echo "[ensure-build-deps] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v pkg-config >/dev/null 2>&1 || need_pkgs+=(pkg-config)
if ! { command -v pkg-config >/dev/null 2>&1 && pkg-config --exists openssl; }; then
  need_pkgs+=(libssl-dev)
fi
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]} from Debian's archive"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
