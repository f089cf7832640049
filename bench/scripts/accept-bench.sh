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
# smtp-source -s 10 -m 20000 -l 4096 -d). ROUNDS (default 3) interleaves
# the three servers per round; the table shows medians, and the ratio is
# the median of the per-round ratios (this machine is noisy).
set -euo pipefail
cd "$(dirname "$0")/../.."

ROUNDS=${ROUNDS:-3}
MESSAGES=${1:-20000}
SESSIONS=${2:-10}
SIZE=${3:-4096}
TERN_PORT=${TERN_PORT:-2525}
WORK=$(mktemp -d /work/main/target/accept-bench.XXXXXX 2>/dev/null || mktemp -d)
TERN_PID=
SINK_PID=
cleanup() {
  if [ -n "$TERN_PID" ]; then kill -KILL "$TERN_PID" 2>/dev/null || true; fi
  if [ -n "$SINK_PID" ]; then kill -KILL "$SINK_PID" 2>/dev/null || true; fi
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
# Each round function sets RATE and QUEUED (and runs in this shell, so the
# EXIT trap always knows the server PID).
postfix_round() {
  postsuper -d ALL >/dev/null 2>&1 || true
  RATE=$(run_source 25)
  QUEUED=$(find /var/spool/postfix/deferred /var/spool/postfix/active /var/spool/postfix/incoming -type f 2>/dev/null | wc -l)
  postsuper -d ALL >/dev/null 2>&1 || true
}

# --- tern ---
tern_round() {
  local cores=$1 round=$2 dir="$WORK/tern-$1-$2"
  # Accept and queue only, like the Postfix side (defer_transports = smtp).
  printf '[delivery]\nhold = true\n' > "$WORK/hold.toml"
  "$TERN" serve --config "$WORK/hold.toml" --listen "127.0.0.1:$TERN_PORT" --data-dir "$dir" --cores "$cores" \
    --admin-listen off 2>"$WORK/tern-$cores-$round.log" &
  TERN_PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$TERN_PORT) 2>/dev/null && break; sleep 0.05; done
  RATE=$(run_source "$TERN_PORT")
  kill -TERM "$TERN_PID"; wait "$TERN_PID" || true; TERN_PID=
  QUEUED=$("$TERN" queue list --data-dir "$dir" | tail -1 | awk '{print $2}')
  rm -rf "$dir"
}

# The client's own ceiling: smtp-sink accepts and discards (no disk).
SINK_PORT=${SINK_PORT:-2527}
sink_round() {
  smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 1000 >/dev/null 2>&1 &
  SINK_PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$SINK_PORT) 2>/dev/null && break; sleep 0.05; done
  RATE=$(run_source "$SINK_PORT")
  kill -TERM "$SINK_PID"; wait "$SINK_PID" 2>/dev/null || true; SINK_PID=
}

S=(); P=(); T1=(); T2=(); Q=""
for round in $(seq "$ROUNDS"); do
  sink_round; S+=("$RATE")
  postfix_round; P+=("$RATE"); Q+=" postfix:$QUEUED"
  tern_round 1 "$round"; T1+=("$RATE"); Q+=" tern1:$QUEUED"
  tern_round 2 "$round"; T2+=("$RATE"); Q+=" tern2:$QUEUED"
  echo "round $round: smtp-sink ${S[-1]}/s, postfix ${P[-1]}/s, tern 1 core ${T1[-1]}/s, tern 2 cores ${T2[-1]}/s" >&2
done

median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
median_ratio() {
  local -n xs=$1; local i rs=()
  for i in "${!P[@]}"; do rs+=("$(python3 -c "print(f'{${xs[$i]} / ${P[$i]}:.1f}')")"); done
  median "${rs[@]}"
}
echo
echo "smtp-source -s $SESSIONS -m $MESSAGES -l $SIZE -d, $ROUNDS rounds, $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d)"
echo "queued after each run (must equal $MESSAGES):$Q"
echo
echo "| server | msgs/s (median) | all rounds | vs Postfix (median of per-round ratios) |"
echo "|---|---|---|---|"
echo "| smtp-sink (discards; the client's ceiling) | $(median "${S[@]}") | ${S[*]} | $(median_ratio S)x |"
echo "| Postfix $(postconf -h mail_version) | $(median "${P[@]}") | ${P[*]} | 1.0x |"
echo "| tern, 1 core | $(median "${T1[@]}") | ${T1[*]} | $(median_ratio T1)x |"
echo "| tern, 2 cores | $(median "${T2[@]}") | ${T2[*]} | $(median_ratio T2)x |"
