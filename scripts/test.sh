#!/usr/bin/env bash
# The test suite, from a bare Debian 12 machine: a Docker engine (installed and started if
# missing), the lab's images (built by labctl; the first build takes a while), unit tests, then
# integration tests against real containers. Every lab a test starts has its own name and ports
# and is removed at the end; a dockerd started here is stopped here.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/ensure-maven.sh
started_pid="$(scripts/ensure-docker.sh)"
cleanup() {
  if [ -n "$started_pid" ]; then
    echo "[test] stopping the dockerd this run started (pid $started_pid)" >&2
    kill "$started_pid" 2>/dev/null || true
    for _ in $(seq 1 40); do kill -0 "$started_pid" 2>/dev/null || break; sleep 0.5; done
  fi
}
trap cleanup EXIT

export CARGO_TERM_COLOR=never
scripts/ensure-build-deps.sh
scripts/ensure-browser.sh
echo "[test] building labctl" >&2
cargo build --locked --all-targets
echo "[test] formatting (rustfmt.toml) and lints" >&2
if ! { cargo fmt --version && cargo clippy --version; } >/dev/null 2>&1 && command -v rustup >/dev/null; then
  rustup component add rustfmt clippy
fi
cargo fmt --check
cargo clippy --locked --all-targets -- -D warnings

echo "[test] unit tests, then property tests of config and command line (no services)" >&2
cargo test --locked --lib --bins
cargo test --locked --test fuzz

echo "[test] images (cached after the first build)" >&2
start=$(date +%s)
./target/debug/labctl images build
echo "[test] images ready in $(( $(date +%s) - start )) s" >&2

echo "[test] integration tests against real containers" >&2
cargo test --locked --test cli --test compose --test lab --test brokers --test plot --test flink --test spark --test scale --test external --test broker_tls --test exposed --test faults --test disk --test demo --test console -- --test-threads=1 --nocapture
