#!/usr/bin/env bash
# End-to-end through a real Postfix (Debian package, loopback only):
#   tern-loadgen send -> Postfix (port 25, relayhost = the sink) -> tern-loadgen sink
# and checks that every message arrived at the sink exactly once, intact.
# Needs root (it configures and starts the local Postfix); skips otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-300}
SINK_PORT=${SINK_PORT:-2536}
if [ "$(id -u)" != 0 ] || ! command -v postfix >/dev/null; then
  echo "postfix-loadgen: needs root and postfix; skipped"
  exit 0
fi
WORK=$(mktemp -d)
SINK_PID=
STARTED=0
cleanup() {
  if [ -n "$SINK_PID" ]; then kill -KILL "$SINK_PID" 2>/dev/null || true; fi
  if [ "$STARTED" = 1 ]; then postfix stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build -q -p tern-loadgen --bin tern-loadgen
LG=${CARGO_TARGET_DIR:-target}/debug/tern-loadgen

"$LG" sink --listen "127.0.0.1:$SINK_PORT" --expect "$N" --timeout 120s --json "$WORK/sink.json" --quiet \
  >"$WORK/sink.txt" 2>&1 &
SINK_PID=$!

postconf -e inet_interfaces=loopback-only inet_protocols=ipv4 'mynetworks=127.0.0.0/8' \
  "relayhost=[127.0.0.1]:$SINK_PORT" 'defer_transports=' mydestination= \
  'smtpd_recipient_restrictions=permit_mynetworks,reject' maillog_file=/var/log/postfix-ci.log \
  smtp_tls_security_level=none
postsuper -d ALL >/dev/null 2>&1 || true
if postfix status >/dev/null 2>&1; then postfix reload >/dev/null 2>&1; else postfix start >/dev/null 2>&1; STARTED=1; fi
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null && break; sleep 0.1; done

"$LG" send --target 127.0.0.1:25 --messages "$N" --concurrency 5 --size 2KiB --quiet --json "$WORK/send.json"

# The sink exits by itself when N messages of the run arrived (or times out).
if ! wait "$SINK_PID"; then
  SINK_PID=
  echo "sink did not receive every message:"; cat "$WORK/sink.txt"; mailq | tail -5
  exit 1
fi
SINK_PID=
python3 - "$WORK/sink.json" "$N" <<'PY'
import json, sys
report = json.load(open(sys.argv[1])); n = int(sys.argv[2])
runs = report["runs"]
assert len(runs) == 1, runs
r = runs[0]
assert r["distinct"] == n and r["lost"] == 0 and r["duplicates"] == 0 and r["bad_stamps"] == 0, r
print(f"postfix-loadgen: {n} messages through Postfix, all arrived once and intact; end-to-end latency p50 {r['latency_us']['p50']} us, p99 {r['latency_us']['p99']} us")
PY
