#!/usr/bin/env bash
# The lab end to end on a bare Debian machine: a Docker engine (installed and started if
# missing), OpenSSL headers and pkg-config (likewise), labctl built, then `labctl demo`:
# images, every service started and ready, the generator's backfill and live feed, the Flink
# job, the Spark export to the Delta Lake, and a summary. Extra arguments go to `labctl demo`
# (e.g. --no-export, --json).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/ensure-docker.sh >/dev/null
scripts/ensure-maven.sh
scripts/ensure-build-deps.sh
cargo build --release --locked
./target/release/labctl demo "$@"
./target/release/labctl status
