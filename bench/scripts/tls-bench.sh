#!/usr/bin/env bash
# STARTTLS acceptance: the same tern-loadgen load (4 KiB, --per-conn 10,
# so a handshake every 10 messages) against a stock Postfix with STARTTLS
# and against `tern serve` (1 core), both accepting and queueing only
# (Postfix: defer_transports = smtp; tern: delivery.hold), at 10 and 50
# connections, with full handshakes (--tls-no-resume) and with resumption;
# plus tern without TLS, for the TLS cost per message. Prints a Markdown
# table: msgs/s, eod p50/p99, handshake p50, the ratio to Postfix in the
# same row group, and tern's CPU per message (process utime+stime from
# /proc / messages).
#
# Needs root and postfix (it configures and starts the local Postfix on
# loopback) and openssl (Postfix's certificate). Usage:
#   bench/scripts/tls-bench.sh [MESSAGES]        (default 5000)
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-5000}
PER_CONN=${PER_CONN:-10}
TERN_PORT=${TERN_PORT:-2545}
WORK=$(mktemp -d)
TERN_PID=
MAIN_CF=$(postconf -h config_directory 2>/dev/null || echo /etc/postfix)/main.cf
cleanup() {
  if [ -n "$TERN_PID" ]; then kill -KILL "$TERN_PID" 2>/dev/null || true; fi
  # main.cf as found (the certificate it pointed at is about to go).
  if [ -f "$WORK/main.cf" ]; then cp "$WORK/main.cf" "$MAIN_CF"; fi
  if [ "${STARTED_POSTFIX:-0}" = 1 ]; then postfix stop >/dev/null 2>&1 || true
  else postfix reload >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT
[ "$(id -u)" = 0 ] && command -v postfix >/dev/null || { echo "tls-bench: needs root and postfix" >&2; exit 1; }

cargo build --release -q -p tern-engine --bin tern -p tern-loadgen --bin tern-loadgen
TERN=target/release/tern
LG=target/release/tern-loadgen

cp "$MAIN_CF" "$WORK/main.cf"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost \
  -keyout "$WORK/pf.key" -out "$WORK/pf.crt" >/dev/null 2>&1
postconf -e inet_interfaces=loopback-only inet_protocols=ipv4 'mynetworks=127.0.0.0/8' relayhost= \
  'defer_transports=smtp' 'smtpd_recipient_restrictions=permit_mynetworks,reject' mydestination= \
  maillog_file=/var/log/postfix-bench.log smtpd_tls_security_level=may \
  "smtpd_tls_cert_file=$WORK/pf.crt" "smtpd_tls_key_file=$WORK/pf.key"
postsuper -d ALL >/dev/null 2>&1 || true
STARTED_POSTFIX=0
if postfix status >/dev/null 2>&1; then postfix reload >/dev/null 2>&1; else postfix start >/dev/null 2>&1; STARTED_POSTFIX=1; fi
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/25) 2>/dev/null && break; sleep 0.1; done

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# send PORT CONNS TLSFLAGS JSON
send() {
  # shellcheck disable=SC2086
  timeout 600 "$LG" send --target "127.0.0.1:$1" --messages "$N" --concurrency "$2" --per-conn "$PER_CONN" \
    --size 4KiB $3 --quiet --json "$4" >/dev/null
}

# row NAME JSON CPU_US_PER_MSG POSTFIX_JSON
row() {
  python3 - "$@" <<'PY'
import json, sys
name, js, cpu, base = sys.argv[1:5]
s = json.load(open(js))
m = s["messages"]
err = m["temp_fail"] + m["perm_fail"] + m["conn_errors"]
eod = s["latency_us"]["eod"]; tls = s["latency_us"]["tls"]
t = s.get("tls") or {}
ratio = "-"
if base != "-":
    ratio = f"{s['messages_per_second'] / json.load(open(base))['messages_per_second']:.1f}x"
hs = f"{tls['p50']}" if tls.get("count", 1) else "-"
print(f"| {name} | {s['messages_per_second']:.0f} | {eod['p50']} | {eod['p99']} | {hs} | {t.get('full', 0)}/{t.get('resumed', 0)} | {err} | {ratio} | {cpu} |")
PY
}

tern_run() { # NAME CONNS TLSFLAGS BASEJSON
  local dir="$WORK/tern-data" js="$WORK/$RANDOM.json"
  printf '[delivery]\nhold = true\n' > "$WORK/hold.toml"
  "$TERN" serve --config "$WORK/hold.toml" --listen "127.0.0.1:$TERN_PORT" --data-dir "$dir" --cores 1 \
    --admin-listen off 2>"$WORK/tern.log" &
  TERN_PID=$!
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$TERN_PORT) 2>/dev/null && break; sleep 0.05; done
  local c0; c0=$(cpu_ticks "$TERN_PID")
  send "$TERN_PORT" "$2" "$3" "$js"
  local c1; c1=$(cpu_ticks "$TERN_PID")
  kill -TERM "$TERN_PID"; wait "$TERN_PID" || true; TERN_PID=
  rm -rf "$dir"
  local hz; hz=$(getconf CLK_TCK)
  row "$1" "$js" "$(python3 -c "print(f'{($c1 - $c0) / $hz * 1e6 / $N:.0f}')")" "$4"
}

echo "tern-loadgen send --messages $N --per-conn $PER_CONN --size 4KiB, $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%d), Postfix $(postconf -h mail_version)"
echo
echo "| server | msgs/s | eod p50 us | eod p99 us | TLS handshake p50 us | handshakes full/resumed | errors | vs Postfix | tern CPU us/msg |"
echo "|---|---|---|---|---|---|---|---|---|"
for conns in 10 50; do
  for mode in full resumed; do
    flags="--starttls"; [ "$mode" = full ] && flags="--starttls --tls-no-resume"
    pj="$WORK/pf-$conns-$mode.json"
    postsuper -d ALL >/dev/null 2>&1 || true
    send 25 "$conns" "$flags" "$pj"
    row "Postfix STARTTLS, $conns conns, $mode" "$pj" "-" "-"
    tern_run "tern 1 core STARTTLS, $conns conns, $mode" "$conns" "$flags" "$pj"
  done
  tern_run "tern 1 core no TLS, $conns conns" "$conns" "" "-"
done
postsuper -d ALL >/dev/null 2>&1 || true
