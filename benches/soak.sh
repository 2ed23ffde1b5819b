#!/usr/bin/env bash
# The long soak: CPU training runs SIGKILLed at random (seeded) moments, at
# least GRAFT_SOAK_KILLS times (default 20), each resumed after the kill;
# every run must end on the checkpoint an uninterrupted run ends on, keep the
# same checkpoints, record every metric step once, and verify clean.
#
#   benches/soak.sh                      # 20 kills, release build
#   GRAFT_SOAK_KILLS=50 benches/soak.sh  # more
#   PROFILE=dev benches/soak.sh          # debug build (no release compile)
#
# Writes the summary table to target/soak-report.md (GRAFT_SOAK_REPORT).
set -euo pipefail
cd "$(dirname "$0")/.."
export GRAFT_SOAK_KILLS="${GRAFT_SOAK_KILLS:-20}"
export GRAFT_SOAK_REPORT="${GRAFT_SOAK_REPORT:-$PWD/target/soak-report.md}"
mkdir -p "$(dirname "$GRAFT_SOAK_REPORT")"
release=(--release)
if [ "${PROFILE:-release}" = "dev" ]; then release=(); fi
cargo test "${release[@]}" --test it reliability_soak::soak_long -- --ignored --nocapture
echo
echo "report ($(date -u +%Y-%m-%d), $(nproc) cores, $(uname -m)):"
cat "$GRAFT_SOAK_REPORT"
