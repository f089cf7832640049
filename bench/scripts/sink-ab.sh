#!/usr/bin/env bash
# tern-loadgen sink vs Postfix's smtp-sink under the same client
# (smtp-source -s 10 -m N -l 4096 -d), ROUNDS interleaved rounds, each sink
# started fresh per round. Prints msgs/s of each and the ratio per round.
# Needs root (smtp-sink -u nobody) and postfix's smtp-source/smtp-sink.
# Usage: bench/scripts/sink-ab.sh [MESSAGES]
set -euo pipefail
cd "$(dirname "$0")/../.."
N=${1:-20000}
ROUNDS=${ROUNDS:-5}
P=
trap '[ -n "$P" ] && kill -KILL "$P" 2>/dev/null || true' EXIT
cargo build --release -q -p tern-loadgen --bin tern-loadgen
LG=target/release/tern-loadgen
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
rate() {
  local t0 t1; t0=$(date +%s.%N)
  timeout 300 smtp-source -s 10 -m "$N" -l 4096 -d -f a@example.com -t b@example.net "127.0.0.1:$1"
  t1=$(date +%s.%N); python3 -c "print(f'{$N / ($t1 - $t0):.0f}')"
}
for i in $(seq "$ROUNDS"); do
  smtp-sink -u nobody 127.0.0.1:3801 1000 >/dev/null 2>&1 & P=$!; wait_port 3801
  A=$(rate 3801); kill "$P"; wait "$P" 2>/dev/null || true; P=
  "$LG" sink --listen 127.0.0.1:3802 --duration 300s --quiet >/dev/null 2>&1 & P=$!; wait_port 3802
  B=$(rate 3802); kill -TERM "$P"; wait "$P" 2>/dev/null || true; P=
  echo "round $i: smtp-sink $A msgs/s, tern-loadgen sink $B msgs/s, ratio $(python3 -c "print(round($B / $A, 2))")"
done
