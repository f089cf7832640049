#!/usr/bin/env bash
# A/B of two tern builds relaying the same load, alternating, in one run:
# `tern serve --cores 1` pinned to CPU 1 relaying (`--relay-to`) to a
# `tern-loadgen sink` on CPU 0, `tern-loadgen send` (closed loop,
# --concurrency 10, 4 KiB) on CPU 0. Per run: messages relayed end to end
# per second (send start to the sink's last arrival) and tern's process
# CPU (utime + stime of all its threads, /proc/PID/stat) per message.
#
#   bench/scripts/relay-ab.sh OLD_DIR NEW_DIR [MESSAGES] [ROUNDS]
#
# OLD_DIR and NEW_DIR hold `tern` and `tern-loadgen` (e.g. two release
# target directories). Each round runs OLD then NEW; the same loadgen
# (NEW's) drives both.
set -euo pipefail
OLD=$1; NEW=$2; N=${3:-40000}; ROUNDS=${4:-3}
LG=$NEW/tern-loadgen

one() { # TERN_BIN -> one result line
  local tern=$1 w sp tp ap sink t start end ticks
  w=$(mktemp -d); sp=$((20000 + RANDOM % 10000)); tp=$((sp + 1)); ap=$((sp + 2))
  taskset -c 0 "$LG" sink --listen 127.0.0.1:$sp --expect "$N" --timeout 180s >"$w/sink.out" 2>&1 &
  sink=$!
  sleep 0.5
  taskset -c 1 "$tern" serve --data-dir "$w/data" --cores 1 --listen 127.0.0.1:$tp \
    --admin-listen 127.0.0.1:$ap --relay-to 127.0.0.1:$sp 2>"$w/tern.log" &
  t=$!
  for _ in $(seq 100); do grep -q "listener bound" "$w/tern.log" && break; sleep 0.1; done
  start=$(date +%s.%N)
  taskset -c 0 "$LG" send --target 127.0.0.1:$tp --messages "$N" --concurrency 10 --size 4096 --quiet >/dev/null 2>&1
  wait $sink || { echo "sink did not get $N messages" >&2; kill $t; exit 1; }
  end=$(date +%s.%N)
  ticks=$(awk '{print $14 + $15}' /proc/$t/stat)
  kill $t; wait $t 2>/dev/null || true
  rm -rf "$w"
  python3 -c "
n, s, e, cpu = $N, $start, $end, $ticks / $(getconf CLK_TCK)
print(f'{n / (e - s):.0f} msgs/s, tern CPU {cpu:.2f} s = {cpu / n * 1e6:.1f} us/msg')"
}

for r in $(seq "$ROUNDS"); do
  echo "round $r old: $(one "$OLD/tern")"
  echo "round $r new: $(one "$NEW/tern")"
done
