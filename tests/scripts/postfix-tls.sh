#!/usr/bin/env bash
# TLS required in both directions between tern and a real Postfix (Debian
# package, loopback only), one chain of four hops:
#   tern-loadgen send --starttls
#     -> tern A (delivery.tls_policy = "encrypt", --relay-to Postfix)
#     -> Postfix smtpd on port 25 (smtpd_tls_security_level = encrypt)
#     -> Postfix smtp client (smtp_tls_security_level = encrypt, relayhost = tern B)
#     -> tern B (its self-signed certificate, STARTTLS offered)
#     -> tern-loadgen sink
# Checks that every message arrived at the sink exactly once, intact, and
# that Postfix's log shows both TLS sessions: "Anonymous TLS connection
# established from" (tern A's STARTTLS) and "TLS connection established
# to" tern B. Postfix refuses mail in clear text under encrypt and its
# client defers instead of sending in clear, so arrival alone already
# says both hops ran in TLS.
# Needs root (it configures and starts the local Postfix); skips otherwise.
# Every main.cf parameter it sets is put back as it was on exit (removed
# when it was unset), Postfix is stopped if this script started it and
# reloaded otherwise.
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-200}
PORT=${PORT:-2546}          # sink; tern A SMTP/admin +1/+2, tern B SMTP/admin +3/+4
SINK_PORT=$PORT
A_PORT=$((PORT + 1))
B_PORT=$((PORT + 3))
if [ "$(id -u)" != 0 ] || ! command -v postfix >/dev/null || ! command -v openssl >/dev/null; then
  echo "postfix-tls: needs root, postfix and openssl; skipped"
  exit 0
fi

# The main.cf parameters this script sets, and how to put each back.
PARAMS=(inet_interfaces inet_protocols mynetworks relayhost defer_transports mydestination
  smtpd_recipient_restrictions maillog_file smtpd_tls_security_level smtpd_tls_cert_file
  smtpd_tls_key_file smtpd_tls_loglevel smtp_tls_security_level smtp_tls_loglevel)
declare -A SAVED=()
for p in "${PARAMS[@]}"; do
  if line=$(postconf -n "$p" 2>/dev/null) && [ -n "$line" ]; then SAVED[$p]=$line; fi
done

WORK=$(mktemp -d)
SINK_PID=
A_PID=
B_PID=
STARTED=0
WAS_RUNNING=0
postfix status >/dev/null 2>&1 && WAS_RUNNING=1
cleanup() {
  for pid in "$A_PID" "$B_PID" "$SINK_PID"; do
    if [ -n "$pid" ]; then kill -KILL "$pid" 2>/dev/null || true; fi
  done
  if [ "$STARTED" = 1 ]; then postfix stop >/dev/null 2>&1 || true; fi
  for p in "${PARAMS[@]}"; do
    if [ -n "${SAVED[$p]:-}" ]; then postconf -e "${SAVED[$p]}"; else postconf -X "$p"; fi
  done
  if [ "$WAS_RUNNING" = 1 ]; then postfix reload >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

cargo build -q -p tern-engine --bin tern -p tern-loadgen --bin tern-loadgen
TERN=${CARGO_TARGET_DIR:-target}/debug/tern
LG=${CARGO_TARGET_DIR:-target}/debug/tern-loadgen
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

# Postfix's certificate (smtpd reads it as root, before its chroot).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=postfix.test \
  -keyout "$WORK/postfix.key" -out "$WORK/postfix.crt" 2>/dev/null
postconf -e inet_interfaces=loopback-only inet_protocols=ipv4 'mynetworks=127.0.0.0/8' \
  "relayhost=[127.0.0.1]:$B_PORT" 'defer_transports=' mydestination= \
  'smtpd_recipient_restrictions=permit_mynetworks,reject' maillog_file=/var/log/postfix-ci.log \
  smtpd_tls_security_level=encrypt "smtpd_tls_cert_file=$WORK/postfix.crt" \
  "smtpd_tls_key_file=$WORK/postfix.key" smtpd_tls_loglevel=1 \
  smtp_tls_security_level=encrypt smtp_tls_loglevel=1
LOG=/var/log/postfix-ci.log
touch "$LOG"
LOG_FROM=$(($(stat -c %s "$LOG") + 1))
postsuper -d ALL >/dev/null 2>&1 || true
if [ "$WAS_RUNNING" = 1 ]; then postfix reload >/dev/null 2>&1; else postfix start >/dev/null 2>&1; STARTED=1; fi
wait_port 25

"$LG" sink --listen "127.0.0.1:$SINK_PORT" --expect "$N" --timeout 120s --json "$WORK/sink.json" --quiet \
  >"$WORK/sink.txt" 2>&1 &
SINK_PID=$!
printf '[server]\nhostname = "tern-b.test"\n[delivery]\nretry_initial = "1s"\n' >"$WORK/b.toml"
"$TERN" serve --config "$WORK/b.toml" --listen "127.0.0.1:$B_PORT" --data-dir "$WORK/b-data" --cores 1 \
  --admin-listen "127.0.0.1:$((B_PORT + 1))" --relay-to "127.0.0.1:$SINK_PORT" 2>"$WORK/b.log" &
B_PID=$!
printf '[server]\nhostname = "tern-a.test"\n[delivery]\nretry_initial = "1s"\ntls_policy = "encrypt"\n' >"$WORK/a.toml"
"$TERN" serve --config "$WORK/a.toml" --listen "127.0.0.1:$A_PORT" --data-dir "$WORK/a-data" --cores 1 \
  --admin-listen "127.0.0.1:$((A_PORT + 1))" --relay-to 127.0.0.1:25 2>"$WORK/a.log" &
A_PID=$!
wait_port "$SINK_PORT"
wait_port "$B_PORT"
wait_port "$A_PORT"

"$LG" send --target "127.0.0.1:$A_PORT" --starttls --messages "$N" --concurrency 5 --size 2KiB \
  --quiet --json "$WORK/send.json" >"$WORK/send.txt"

# The sink exits by itself when N messages of the run arrived (or times out).
if ! wait "$SINK_PID"; then
  SINK_PID=
  echo "sink did not receive every message:"; cat "$WORK/sink.txt"; mailq | tail -5
  echo "--- tern A"; tail -20 "$WORK/a.log"; echo "--- tern B"; tail -20 "$WORK/b.log"
  echo "--- Postfix"; tail -c +"$LOG_FROM" "$LOG" | tail -20
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
PY

metrics() { # GET /metrics without curl
  exec 3<>"/dev/tcp/127.0.0.1/$1" || return 0
  printf 'GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n' >&3
  cat <&3
  exec 3<&-
}
sum() { awk -v m="$1" 'index($0, m "{") == 1 || index($0, m " ") == 1 {s += $NF} END {print s + 0}'; }
a_metrics=$(metrics $((A_PORT + 1)))
fallbacks=$(sum tern_tls_cleartext_fallbacks_total <<<"$a_metrics")
outbound=$(grep '^tern_tls_sessions_total{direction="out"' <<<"$a_metrics" | sum tern_tls_sessions_total)
grep -q '^tern_tls_cleartext_fallbacks_total' <<<"$a_metrics" && [ "$fallbacks" = 0 ] && [ "$outbound" -ge 1 ] || {
  echo "tern A: $outbound outbound TLS sessions, $fallbacks clear-text fallbacks"; exit 1; }

# Postfix logs through postlogd: wait (bounded) for both lines.
from_tern=
to_tern=
for _ in $(seq 100); do
  log=$(tail -c +"$LOG_FROM" "$LOG")
  from_tern=$(grep -E 'postfix/smtpd\[[0-9]+\]: Anonymous TLS connection established from [^ ]*\[127\.0\.0\.1\]' <<<"$log" | head -1 || true)
  to_tern=$(grep -E "postfix/smtp\[[0-9]+\]: (Untrusted|Anonymous|Trusted|Verified) TLS connection established to [^ ]*\[127\.0\.0\.1\]:$B_PORT" <<<"$log" | head -1 || true)
  [ -n "$from_tern" ] && [ -n "$to_tern" ] && break
  sleep 0.1
done
[ -n "$from_tern" ] && [ -n "$to_tern" ] || {
  echo "Postfix's log lacks a TLS line (from tern A: '${from_tern}', to tern B: '${to_tern}'):"
  tail -c +"$LOG_FROM" "$LOG" | tail -30; exit 1; }
sent_in_clear=$(tail -c +"$LOG_FROM" "$LOG" | grep -c 'Must issue a STARTTLS command first' || true)

for pid in "$A_PID" "$B_PID"; do kill -TERM "$pid"; done
wait "$A_PID"; A_PID=
wait "$B_PID"; B_PID=
for node in a b; do
  left=$("$TERN" queue list --data-dir "$WORK/$node-data" | tail -1 | awk '{print $2}')
  [ "$left" = 0 ] || { echo "tern $node still has $left queued"; exit 1; }
done
echo "postfix-tls: $N messages, loadgen -> tern (encrypt) -> Postfix smtpd (encrypt) -> Postfix smtp (encrypt) -> tern -> sink, all arrived once and intact"
echo "  Postfix from tern: ${from_tern#*: }"
echo "  Postfix to tern:   ${to_tern#*: }"
echo "  tern A: $outbound outbound TLS sessions, 0 clear-text fallbacks; refusals for clear text in Postfix's log: $sent_in_clear"
