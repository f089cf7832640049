#!/usr/bin/env bash
# The load generator against the reference tools, in one run:
#   1. tern-loadgen send -> tern-loadgen sink     (our client and sink)
#   2. smtp-source       -> smtp-sink             (Postfix's tools, same parameters)
#   3. smtp-source       -> tern-loadgen sink     (our sink vs smtp-sink under the same client)
#   4. tern-loadgen send -> smtp-sink             (our client vs smtp-source against the same sink)
#   5. tern-loadgen send -> Postfix -> tern-loadgen sink (a real relay, end to end)
#   6. tern-loadgen send -> tern serve            (acceptance only)
#   7. tern-loadgen send -> tern serve -> tern-loadgen sink (tern relaying, end to end)
# Prints one Markdown table (msgs/s, p50, p99, errors, lost, duplicated) and
# the ratios. Needs root and postfix (smtp-source, smtp-sink) for 2-5.
# Usage: bench/scripts/loadgen-bench.sh [MESSAGES] [SESSIONS] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-20000}
C=${2:-10}
SIZE=${3:-4096}
WORK=$(mktemp -d /work/main/target/loadgen-bench.XXXXXX 2>/dev/null || mktemp -d)
PIDS=()
STARTED_POSTFIX=0
cleanup() {
  for p in "${PIDS[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$STARTED_POSTFIX" = 1 ]; then postfix stop >/dev/null 2>&1 || true; fi
  rm -rf "$WORK"
}
trap cleanup EXIT

# Postfix (smtp-source, smtp-sink, the relay) from Debian when missing.
if ! command -v smtp-source >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
cargo build --release -q -p tern-loadgen --bin tern-loadgen -p tern-engine --bin tern
LG=target/release/tern-loadgen
TERN=target/release/tern
now() { date +%s.%N; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }

start_sink() { # port json
  "$LG" sink --listen "127.0.0.1:$1" --expect "$N" --timeout 600s --json "$2" --quiet >/dev/null 2>&1 &
  SINK=$!; PIDS+=("$SINK"); wait_port "$1"
}
start_smtp_sink() { # port
  smtp-sink -u nobody -c "127.0.0.1:$1" 1000 >/dev/null 2>&1 &
  SSINK=$!; PIDS+=("$SSINK"); wait_port "$1"
}
lg_send() { # port json
  "$LG" send --target "127.0.0.1:$1" --messages "$N" --concurrency "$C" --per-conn 0 --size "$SIZE" --quiet --json "$2" >/dev/null
}
smtp_source() { # port -> prints msgs/s
  local t0 t1; t0=$(now)
  timeout 600 smtp-source -s "$C" -m "$N" -l "$SIZE" -d -f a@example.com -t b@example.net "127.0.0.1:$1"
  t1=$(now); python3 -c "print(f'{$N / ($t1 - $t0):.0f}')"
}
row() { # name send.json sink.json|-
  python3 - "$@" <<'PY'
import json, sys
name, send, sink = sys.argv[1], sys.argv[2], sys.argv[3]
s = json.load(open(send))
lat = s["latency_us"]["transaction"]
m = s["messages"]
errors = m["temp_fail"] + m["perm_fail"] + m["conn_errors"]
lost = dup = "-"
if sink != "-":
    r = json.load(open(sink))["runs"]
    r = [x for x in r if x["run"] == s["run"]][0]
    lost, dup = r["lost"] + (m["ok"] - r["distinct"]), r["duplicates"]
print(f"| {name} | {s['messages_per_second']:.0f} | {lat['p50']} | {lat['p99']} | {errors} | {lost} | {dup} |")
PY
}

echo "| path | msgs/s | p50 us | p99 us | errors | lost | duplicated |" > "$WORK/table"
echo "|---|---|---|---|---|---|---|" >> "$WORK/table"

# 1. loadgen -> loadgen sink
start_sink 2541 "$WORK/1.sink.json"; lg_send 2541 "$WORK/1.send.json"; wait "$SINK" || true
row "tern-loadgen send -> tern-loadgen sink" "$WORK/1.send.json" "$WORK/1.sink.json" >> "$WORK/table"
R1=$(python3 -c "import json;print(json.load(open('$WORK/1.send.json'))['messages_per_second'])")

if command -v smtp-source >/dev/null && [ "$(id -u)" = 0 ]; then
  # 2. smtp-source -> smtp-sink
  start_smtp_sink 2542; R2=$(smtp_source 2542); kill "$SSINK"
  echo "| smtp-source -> smtp-sink | $R2 | - | - | - | - | - |" >> "$WORK/table"
  # 3. smtp-source -> loadgen sink (no stamps: counted as bad_stamps, still accepted)
  "$LG" sink --listen 127.0.0.1:2543 --duration 600s --json "$WORK/3.sink.json" --quiet >/dev/null 2>&1 &
  SINK=$!; PIDS+=("$SINK"); wait_port 2543
  R3=$(smtp_source 2543); kill -TERM "$SINK"; wait "$SINK" || true
  echo "| smtp-source -> tern-loadgen sink | $R3 | - | - | - | - | - |" >> "$WORK/table"
  # 4. loadgen -> smtp-sink
  start_smtp_sink 2544; lg_send 2544 "$WORK/4.send.json"; kill "$SSINK"
  row "tern-loadgen send -> smtp-sink" "$WORK/4.send.json" - >> "$WORK/table"
  # 5. loadgen -> Postfix -> loadgen sink
  start_sink 2545 "$WORK/5.sink.json"
  postconf -e inet_interfaces=loopback-only inet_protocols=ipv4 'mynetworks=127.0.0.0/8' \
    'relayhost=[127.0.0.1]:2545' 'defer_transports=' mydestination= smtp_tls_security_level=none \
    'smtpd_recipient_restrictions=permit_mynetworks,reject' maillog_file=/var/log/postfix-bench.log
  postsuper -d ALL >/dev/null 2>&1 || true
  if postfix status >/dev/null 2>&1; then postfix reload >/dev/null 2>&1; else postfix start >/dev/null 2>&1; STARTED_POSTFIX=1; fi
  wait_port 25
  lg_send 25 "$WORK/5.send.json"; wait "$SINK" || true
  row "tern-loadgen send -> Postfix -> tern-loadgen sink" "$WORK/5.send.json" "$WORK/5.sink.json" >> "$WORK/table"
fi

# 6. loadgen -> tern (acceptance only)
printf '[delivery]\nhold = true\n' > "$WORK/hold.toml"   # accept and queue, deliver nothing
"$TERN" serve --config "$WORK/hold.toml" --listen 127.0.0.1:2546 --data-dir "$WORK/tern" --cores 1 --admin-listen off 2>/dev/null &
TP=$!; PIDS+=("$TP"); wait_port 2546
lg_send 2546 "$WORK/6.send.json"; kill -TERM "$TP"; wait "$TP" || true
row "tern-loadgen send -> tern serve (accept only)" "$WORK/6.send.json" - >> "$WORK/table"

# 7. loadgen -> tern (relaying to the sink) -> loadgen sink
start_sink 2548 "$WORK/7.sink.json"
"$TERN" serve --listen 127.0.0.1:2547 --data-dir "$WORK/tern7" --cores 1 --admin-listen off \
  --relay-to 127.0.0.1:2548 2>/dev/null &
TP=$!; PIDS+=("$TP"); wait_port 2547
lg_send 2547 "$WORK/7.send.json"; wait "$SINK" || true; kill -TERM "$TP"; wait "$TP" || true
row "tern-loadgen send -> tern serve -> tern-loadgen sink" "$WORK/7.send.json" "$WORK/7.sink.json" >> "$WORK/table"

echo
echo "$N messages of $SIZE bytes, $C connections, $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ)"
echo
cat "$WORK/table"
if [ -n "${R2:-}" ]; then
  echo
  python3 -c "print(f'tern-loadgen send -> sink / smtp-source -> smtp-sink: {$R1 / $R2:.1f}x (target >= 2x)')"
  python3 -c "print(f'smtp-source -> tern-loadgen sink / smtp-source -> smtp-sink: {$R3 / $R2:.2f}x (sink not the bottleneck when >= 1)')"
  python3 -c "import json; a=json.load(open('$WORK/7.send.json'))['messages_per_second']; b=json.load(open('$WORK/5.send.json'))['messages_per_second']; print(f'relay: tern / Postfix (loadgen -> relay -> sink): {a / b:.1f}x')"
fi
