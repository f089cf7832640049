#!/usr/bin/env bash
# Acceptance throughput, durable: Postfix's smtp-source against a stock
# Postfix and against `tern serve` (1 and 2 cores), in one run, on this
# machine. Prints a Markdown table with msgs/s and the ratio to Postfix.
#
# Needs: postfix (smtp-source), run as root (it configures and starts the
# local Postfix on loopback only, with delivery deferred so both servers
# only accept and queue). Usage:
#   bench/scripts/accept-bench.sh [MESSAGES] [SESSIONS] [SIZE]
# Defaults: 20000 messages, 10 sessions, 4096 bytes (the issue's command:
# smtp-source -s 10 -m 20000 -l 4096 -d).
set -euo pipefail
cd "$(dirname "$0")/../.."

MESSAGES=${1:-20000}
SESSIONS=${2:-10}
SIZE=${3:-4096}
TERN_PORT=${TERN_PORT:-2525}
WORK=$(mktemp -d /work/main/target/accept-bench.XXXXXX 2>/dev/null || mktemp -d)
TERN_PID=
cleanup() {
  if [ -n "$TERN_PID" ]; then kill -KILL "$TERN_PID" 2>/dev/null || true; fi
  if [ "${STARTED_POSTFIX:-0}" = 1 ]; then postfix stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

command -v smtp-source >/dev/null || { echo "smtp-source not found: apt-get install postfix" >&2; exit 1; }
cargo build --release -q -p tern-engine --bin tern
TERN=target/release/tern

now() { date +%s.%N; }

# run_source PORT -> prints msgs/s; fails if smtp-source fails.
run_source() {
  local port=$1 t0 t1
  t0=$(now)
  timeout 600 smtp-source -s "$SESSIONS" -m "$MESSAGES" -l "$SIZE" -d \
    -f bench@example.com -t rcpt@remote.example "127.0.0.1:$port"
  t1=$(now)
  python3 -c "print(f'{$MESSAGES / ($t1 - $t0):.0f}')"
}

# --- Postfix ---
postconf -e inet_interfaces=loopback-only inet_protocols=ipv4 \
  'mynetworks=127.0.0.0/8' relayhost= 'defer_transports=smtp' \
  'smtpd_recipient_restrictions=permit_mynetworks,reject' mydestination= \
  maillog_file=/var/log/postfix-bench.log
postsuper -d ALL >/dev/null 2>&1 || true
STARTED_POSTFIX=0
if ! postfix status >/dev/null 2>&1; then postfix start >/dev/null 2>&1; STARTED_POSTFIX=1; fi
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null && break; sleep 0.1; done
postfix_rate=$(run_source 25)
postfix_queued=$(find /var/spool/postfix/deferred /var/spool/postfix/active /var/spool/postfix/incoming -type f 2>/dev/null | wc -l)
postsuper -d ALL >/dev/null 2>&1 || true

# --- tern, 1 and 2 cores ---
tern_run() {
  local cores=$1 dir="$WORK/tern-$1"
  "$TERN" serve --listen "127.0.0.1:$TERN_PORT" --data-dir "$dir" --cores "$cores" --admin-listen off \
    2>"$WORK/tern-$cores.log" &
  TERN_PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$TERN_PORT) 2>/dev/null && break; sleep 0.05; done
  local rate
  rate=$(run_source "$TERN_PORT")
  kill -TERM "$TERN_PID"; wait "$TERN_PID" || true; TERN_PID=
  local queued
  queued=$("$TERN" queue list --data-dir "$dir" | tail -1 | awk '{print $2}')
  echo "$rate $queued"
}
read -r tern1_rate tern1_queued < <(tern_run 1)
read -r tern2_rate tern2_queued < <(tern_run 2)

ratio() { python3 -c "print(f'{$1 / $2:.1f}x')"; }
echo
echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -d, $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
echo
echo "| server | msgs/s | queued after run | vs Postfix |"
echo "|---|---|---|---|"
echo "| Postfix $(postconf -h mail_version) | $postfix_rate | $postfix_queued | 1.0x |"
echo "| tern, 1 core | $tern1_rate | $tern1_queued | $(ratio "$tern1_rate" "$postfix_rate") |"
echo "| tern, 2 cores | $tern2_rate | $tern2_queued | $(ratio "$tern2_rate" "$postfix_rate") |"
