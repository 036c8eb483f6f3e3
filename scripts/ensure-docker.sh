#!/usr/bin/env bash
# Makes a Docker engine reachable for labctl on a bare Debian machine: installs Debian's
# docker.io (and debootstrap, for the base image where no registry is reachable, and
# docker-compose) when missing,
# and starts dockerd when none answers. Prints the PID of a dockerd it started (nothing if an
# engine was already there), so the caller can stop exactly what it started.
set -euo pipefail

log() { echo "[ensure-docker] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v dockerd >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v docker >/dev/null 2>&1 || need_pkgs+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || need_pkgs+=(debootstrap)
# Debian's Compose (1.29): the tests check that the rendered docker-compose.yml runs with it.
command -v docker-compose >/dev/null 2>&1 || need_pkgs+=(docker-compose)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]} from Debian's archive"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if docker info >/dev/null 2>&1; then
  log "a Docker engine is already running"
  exit 0
fi

sock=/var/run/docker.sock
pidfile=/run/labctl-dockerd.pid
logfile=/var/log/labctl-dockerd.log
log "starting dockerd (log: $logfile)"
as_root sh -c "nohup dockerd --host unix://$sock --pidfile $pidfile >$logfile 2>&1 &"
for _ in $(seq 1 60); do
  if docker info >/dev/null 2>&1; then
    cat "$pidfile"
    exit 0
  fi
  sleep 0.5
done
log "dockerd did not come up; last lines of $logfile:"
tail -n 20 "$logfile" >&2 || true
exit 1
