#!/usr/bin/env bash
# The lab end to end on a bare Debian machine: a Docker engine (installed and started if
# missing), labctl built, the lab's images built, every service started and ready, the
# generator feeding the topic. Extra arguments go to `labctl up` (e.g. --taskmanagers 2).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-docker.sh >/dev/null
cargo build --release --locked
./target/release/labctl up "$@"
./target/release/labctl status
