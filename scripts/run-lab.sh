#!/usr/bin/env bash
# The lab end to end on a bare Debian machine: a Docker engine (installed and started if
# missing), OpenSSL headers and pkg-config (likewise), labctl built, then `labctl demo`:
# images, every service started and ready, the generator's backfill and live feed, the Flink
# job, the Spark export to the Delta Lake, and a summary. Extra arguments go to `labctl demo`
# (e.g. --no-export, --json).
#
# Each phase's wall time and the machine's CPU time spent during it go to stderr at the end:
# CPU is read from /proc/stat, so work done inside dockerd's image builds counts too; "cores" is
# how many cores the phase kept busy, and "stolen" the CPU time a virtual machine's host took
# from it (a slow phase on a busy host is not a slow phase). See README "The two commands".
set -euo pipefail
cd "$(dirname "$0")/.."

ticks_per_s=$(getconf CLK_TCK)
# CPU ticks of the whole machine: busy (user+nice+system+irq+softirq) and stolen.
cpu_ticks() { awk '/^cpu /{print $2+$3+$4+$7+$8, $9; exit}' /proc/stat; }
report=()
phase() {
  local name=$1; shift
  local t0 c0; t0=$(date +%s.%N); c0=$(cpu_ticks)
  "$@"
  local t1 c1; t1=$(date +%s.%N); c1=$(cpu_ticks)
  report+=("$(awk -v n="$name" -v a="$t0" -v b="$t1" -v c="$c0" -v d="$c1" -v hz="$ticks_per_s" \
    'BEGIN{split(c,x," "); split(d,y," "); w=b-a; u=(y[1]-x[1])/hz; st=(y[2]-x[2])/hz;
      printf "%-10s %7.1f s wall %8.1f s cpu (%.2f cores) %7.1f s stolen", n, w, u, (w>0?u/w:0), st}')")
}
summary() {
  [ ${#report[@]} -gt 0 ] || return 0
  echo "[run-lab] phases:" >&2
  printf '[run-lab]   %s\n' "${report[@]}" >&2
}
trap summary EXIT

phase docker scripts/ensure-docker.sh >/dev/null
phase maven scripts/ensure-maven.sh
phase build-deps scripts/ensure-build-deps.sh
phase cargo cargo build --release --locked
phase images ./target/release/labctl images build
phase demo ./target/release/labctl demo "$@"
phase status ./target/release/labctl status
