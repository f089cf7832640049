#!/usr/bin/env bash
# Front end vs straight to the back end (issue 18), same load, one run,
# alternating: a tern back end (`--cores 1`, CPU 1, relaying to a
# `tern-loadgen sink` on CPU 0) takes N messages from `tern-loadgen send`
# (closed loop, --concurrency C, 4 KiB, CPU 0) either directly or through
# a tern front end (`--role front-end --cores 1`, CPU 0, XCLIENT to the
# back end, which lists 127.0.0.1 in relay.front_end_networks: the front
# end connects out from it). Per run: the
# sender's acceptance throughput and end-of-data p50/p99 (tern-loadgen's
# report), and the process CPU (utime + stime of all threads,
# /proc/PID/stat) per message of the back end and of the front end.
#
#   bench/scripts/frontend-bench.sh [MESSAGES] [ROUNDS] [CONCURRENCY]
#
# Binaries from CARGO_TARGET_DIR (default target)/release.
set -euo pipefail
N=${1:-20000}; ROUNDS=${2:-3}; C=${3:-10}
BIN=${CARGO_TARGET_DIR:-$(dirname "$0")/../../target}/release
TERN=$BIN/tern; LG=$BIN/tern-loadgen
TCK=$(getconf CLK_TCK)

wait_bound() { # LOG
  for _ in $(seq 100); do grep -q "listener bound" "$1" && return 0; sleep 0.1; done
  echo "no listener in $1" >&2; return 1
}

one() { # direct|front -> one result line
  local mode=$1 w sp bp fp sink be fe target becpu fecpu
  w=$(mktemp -d); sp=$((20000 + RANDOM % 10000)); bp=$((sp + 1)); fp=$((sp + 2))
  taskset -c 0 "$LG" sink --listen 127.0.0.1:$sp --expect "$N" --timeout 300s >"$w/sink.out" 2>&1 &
  sink=$!
  cat >"$w/backend.toml" <<TOML
[server]
listen = "127.0.0.2:$bp"
admin_listen = "off"
data_dir = "$w/be-data"
cores = 1
relay_to = "127.0.0.1:$sp"
[relay]
client_networks = ["127.0.0.0/8"]
front_end_networks = ["127.0.0.1"]
TOML
  taskset -c 1 "$TERN" serve --config "$w/backend.toml" 2>"$w/backend.log" &
  be=$!
  wait_bound "$w/backend.log"
  target=127.0.0.2:$bp
  fe=
  if [ "$mode" = front ]; then
    cat >"$w/frontend.toml" <<TOML
[server]
listen = "127.0.0.3:$fp"
admin_listen = "off"
data_dir = "$w/fe-data"
cores = 1
role = "front-end"
[pools.backends]
hosts = [{ address = "127.0.0.2:$bp" }]
TOML
    taskset -c 0 "$TERN" serve --config "$w/frontend.toml" 2>"$w/frontend.log" &
    fe=$!
    wait_bound "$w/frontend.log"
    target=127.0.0.3:$fp
  fi
  taskset -c 0 "$LG" send --target "$target" --messages "$N" --concurrency "$C" --size 4096 \
    --quiet --json "$w/send.json" >/dev/null 2>&1
  wait $sink || {
    echo "sink did not get $N messages ($mode); logs in $w" >&2
    tail -5 "$w"/*.log "$w/sink.out" >&2
    kill $be $fe 2>/dev/null; exit 1
  }
  becpu=$(awk '{print $14 + $15}' /proc/$be/stat)
  fecpu=0
  if [ -n "$fe" ]; then fecpu=$(awk '{print $14 + $15}' /proc/$fe/stat); kill $fe; wait $fe 2>/dev/null || true; fi
  kill $be; wait $be 2>/dev/null || true
  python3 - "$w/send.json" "$mode" "$N" "$becpu" "$fecpu" "$TCK" <<'PY'
import json, sys
d = json.load(open(sys.argv[1]))
mode, n, be, fe, tck = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
ok = d["messages"]["ok"]
eod = d["latency_us"]["eod"]
line = f"{mode:6} {d['messages_per_second']:8.0f} msgs/s  eod p50 {eod['p50']/1000:.3f} ms p99 {eod['p99']/1000:.3f} ms  ok {ok}/{n}  back end {be/tck/n*1e6:.1f} us/msg"
if mode == "front":
    line += f"  front end {fe/tck/n*1e6:.1f} us/msg"
print(line)
PY
  rm -rf "$w"
}

for r in $(seq "$ROUNDS"); do
  echo "round $r: $(one direct)"
  echo "round $r: $(one front)"
done
