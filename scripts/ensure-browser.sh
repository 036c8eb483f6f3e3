#!/usr/bin/env bash
# What the console's browser test needs on a bare Debian machine, when missing: Debian's
# chromium (driven headless; no browser download), Node.js with npm, and playwright-core at the
# version and hash tests/browser/package-lock.json pins (npm ci, from npm's configured registry).
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "[ensure-browser] $*" >&2; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo "$@"; fi; }

need_pkgs=()
command -v chromium >/dev/null 2>&1 || need_pkgs+=(chromium)
command -v node >/dev/null 2>&1 || need_pkgs+=(nodejs)
command -v npm >/dev/null 2>&1 || need_pkgs+=(npm)
if [ "${#need_pkgs[@]}" -gt 0 ]; then
  log "installing ${need_pkgs[*]} from Debian's archive"
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${need_pkgs[@]}" >/dev/null
fi
if [ ! -d tests/browser/node_modules/playwright-core ]; then
  log "installing playwright-core (tests/browser/package-lock.json)"
  (cd tests/browser && npm ci --no-audit --no-fund --ignore-scripts >/dev/null)
fi
