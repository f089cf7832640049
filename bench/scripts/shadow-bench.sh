#!/usr/bin/env bash
# Cost of shadow redundancy (issue 6), in one run on this machine:
#   U: tern-loadgen send -> node A alone (no [cluster] peers: shadow_redundancy
#      only acts when peers are listed, so this is the plain durable relay)
#   S: tern-loadgen send -> node A, which stores a shadow copy of every
#      message on node B before its 250 (A and B list each other as peers)
#   D (CONTROL=1): the disk-sharing control: A alone (no shadow) while a
#      second, unshadowed node C on B's CPU gets the same load from its own
#      sender (on C's CPU) for the whole run: what a second busy node on
#      this machine's one disk costs A, without any shadowing.
# Both nodes: `tern serve --cores 1`, [delivery] hold = true (acceptance
# only: delivery does not compete), fresh data directories for every run.
# Per round (ROUNDS, default 3; medians in the table):
#   1. closed loop: --concurrency C --per-conn 0 --size SIZE --messages N
#      against U, then S (order alternates by round)
#   2. open loop at a fixed rate = half (RATE_FRACTION) of U's closed-loop
#      msgs/s of the same round (--rate R --messages R*OPEN_SECS), against U and S.
# Reported: msgs/s and the end-of-data reply latency (loadgen's "eod":
# from the first byte of content to the 250, i.e. the acknowledgement;
# closed loop and open loop measure it the same way) p50/p99, plus, for the
# open loop, the "transaction" p99 (from each message's scheduled start:
# includes waiting for a free connection). Ratios S/U are per round, then
# the median. Checks per run: every message got 250; A's /metrics:
# tern_messages_accepted_total = sent; S: tern_shadow_copies_made_total =
# sent, tern_non_redundant_accepts_total = 0, tern_shadow_copies_failed_total
# = 0, and B's tern_shadow_copies_held_total = sent; no WARN/ERROR log line.
#
# Note: tern and tern-loadgen pin executor i to CPU i (glommio
# Placement::Fixed), so with --cores 1 A's, B's and the sender's executors
# all run on CPU 0; CPU 1 takes only their helper threads (log appender,
# admin, io_uring workers). LG_CORES=2 spreads the sender over both CPUs.
# The table shows each CPU's busy share during every load generator run
# (from /proc/stat; the whole machine, other sessions included).
#
# Usage: bench/scripts/shadow-bench.sh [MESSAGES] [CONCURRENCY] [SIZE]
# Defaults 20000, 10, 4096. Knobs: ROUNDS (3), OPEN_SECS (10), LG_CORES (1),
# NODE_CORES (1: every node's --cores), B_CPU (the last CPU: B and C run
# under taskset -c B_CPU; 0 = no taskset, e.g. with NODE_CORES=2),
# CONTROL (0; 1 adds the same-disk control D to every round),
# EXTRA_TOML (appended to every node's config, e.g. '[storage]\nio = "buffered"'),
# RATE_FRACTION (0.5: the fixed rate as a fraction of U's closed-loop msgs/s),
# WARMUP (2000 messages into U before round 1, not reported), WAIT (300 s:
# bound on each load generator run), ports A_PORT..B_ADMIN (2671-2674).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-20000}
C=${2:-10}
SIZE=${3:-4096}
ROUNDS=${ROUNDS:-3}
OPEN_SECS=${OPEN_SECS:-10}
RATE_FRACTION=${RATE_FRACTION:-0.5}
LG_CORES=${LG_CORES:-1}
NODE_CORES=${NODE_CORES:-1}
WARMUP=${WARMUP:-2000}
WAIT=${WAIT:-300}
A_PORT=${A_PORT:-2671}
B_PORT=${B_PORT:-2672}
A_ADMIN=${A_ADMIN:-2673}
B_ADMIN=${B_ADMIN:-2674}

WORK=$(mktemp -d /tmp/shadow-bench.XXXXXX)
A_PID=                       # processes this script started and has not
B_PID=                       # stopped yet (cleared once stopped)
C_LG_PID=                    # (D: node C is B_PID, its sender C_LG_PID)
CONTROL=${CONTROL:-0}
cleanup() {
  local p
  for p in $A_PID $B_PID $C_LG_PID; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release -q -p tern-engine -p tern-loadgen
TERN=target/release/tern
LG=target/release/tern-loadgen

now() { date +%s.%N; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; return 1; }
# Ends PID (started here): TERM, then KILL after $2 seconds.
stop_pid() {
  local pid=$1 grace=${2:-30} i
  kill -TERM "$pid" 2>/dev/null || return 0
  for i in $(seq $((grace * 10))); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}
metric() { # admin-port name -> sum over cores
  curl -s --max-time 2 "http://127.0.0.1:$1/metrics" | awk -v n="$2" '$1 ~ "^"n"[{]" {s += $2} END {print s + 0}'
}
cpu_s() { awk -v hz="$(getconf CLK_TCK)" '{printf "%.2f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo nan; }
# "busy total" jiffies per CPU, one line: cpu0busy cpu0total cpu1busy ...
cpu_snap() { awk '/^cpu[0-9]/ {b = $2 + $3 + $4 + $7 + $8; t = b + $5 + $6; printf "%d %d ", b, t}' /proc/stat; }
warns() { local c; c=$(grep -cE ' (WARN|ERROR) ' "$1" 2>/dev/null || true); echo "${c:-0}"; }

printf '[delivery]\nhold = true\n' >"$WORK/u.toml"
# The shadow link needs TLS with pinned peer certificates: both nodes
# serve one cluster certificate and pin its fingerprint.
FP=$("$TERN" tls fingerprint --data-dir "$WORK/cluster" | cut -f1)
CLUSTER_TLS="[tls]
certificates = [ { cert_file = \"$WORK/cluster/tls/self-signed.crt\", key_file = \"$WORK/cluster/tls/self-signed.key\" } ]"
cat >"$WORK/a.toml" <<EOF
[delivery]
hold = true
[cluster]
node_id = "a"
peers = [ { node_id = "b", address = "127.0.0.1:$B_PORT", fingerprint = "$FP" } ]
$CLUSTER_TLS
EOF
cat >"$WORK/b.toml" <<EOF
[delivery]
hold = true
[cluster]
node_id = "b"
peers = [ { node_id = "a", address = "127.0.0.1:$A_PORT", fingerprint = "$FP" } ]
$CLUSTER_TLS
EOF

# EXTRA_TOML: appended to every node's config (e.g. a [storage] setting
# to compare; the same for U and S).
if [ -n "${EXTRA_TOML:-}" ]; then
  for f in u a b; do printf '%b\n' "$EXTRA_TOML" >>"$WORK/$f.toml"; done
fi
B_CPU=${B_CPU:-$(( $(nproc) - 1 ))}
B_TASKSET=""
if command -v taskset >/dev/null && [ "$B_CPU" -gt 0 ]; then B_TASKSET="taskset -c $B_CPU"; fi
# start_nodes U|S TAG: A (and for S, first B) with fresh data dirs.
start_nodes() {
  local cfg=$WORK/u.toml
  if [ "$1" = D ]; then
    $B_TASKSET "$TERN" serve --config "$WORK/u.toml" --data-dir "$WORK/data-b" --listen "127.0.0.1:$B_PORT" \
      --admin-listen "127.0.0.1:$B_ADMIN" --cores "$NODE_CORES" 2>"$WORK/$2.b.log" &
    B_PID=$!
    wait_port "$B_PORT" || { echo "node C did not listen on $B_PORT" >&2; tail "$WORK/$2.b.log" >&2; exit 1; }
  fi
  if [ "$1" = S ]; then
    cfg=$WORK/a.toml
    # B on the other CPU (tern pins its executors to the CPUs of its
    # affinity mask), so the two nodes share the machine's two cores.
    $B_TASKSET "$TERN" serve --config "$WORK/b.toml" --data-dir "$WORK/data-b" --listen "127.0.0.1:$B_PORT" \
      --admin-listen "127.0.0.1:$B_ADMIN" --cores "$NODE_CORES" 2>"$WORK/$2.b.log" &
    B_PID=$!
    wait_port "$B_PORT" || { echo "node B did not listen on $B_PORT" >&2; tail "$WORK/$2.b.log" >&2; exit 1; }
    wait_port "$B_ADMIN" || true
  fi
  "$TERN" serve --config "$cfg" --data-dir "$WORK/data-a" --listen "127.0.0.1:$A_PORT" \
    --admin-listen "127.0.0.1:$A_ADMIN" --cores "$NODE_CORES" 2>"$WORK/$2.a.log" &
  A_PID=$!
  wait_port "$A_PORT" || { echo "node A did not listen on $A_PORT" >&2; tail "$WORK/$2.a.log" >&2; exit 1; }
  wait_port "$A_ADMIN" || true
}
stop_nodes() {
  stop_pid "$A_PID" 30; A_PID=
  if [ -n "$B_PID" ]; then stop_pid "$B_PID" 30; B_PID=; fi
  rm -rf "$WORK/data-a" "$WORK/data-b"
  sync; sleep 0.3
}

# run MODE(closed|open) CONF(U|S) ROUND [RATE]: one measurement; appends a
# line to $WORK/results (python literal) and a check line to $WORK/checks.
run() {
  local mode=$1 conf=$2 round=$3 rate=${4:-} tag="$1-$2-$3" count=$N extra=() rc=0
  local acc made nonred failed held bacc acpu bcpu wa wb ok snap0 busy shlat
  if [ "$mode" = open ]; then count=$((rate * OPEN_SECS)); extra=(--rate "$rate"); fi
  start_nodes "$conf" "$tag"
  if [ "$conf" = D ]; then
    # C's own load, same shape, for longer than A's run (stopped after it).
    $B_TASKSET "$LG" send --target "127.0.0.1:$B_PORT" --concurrency "$C" --per-conn 0 --size "$SIZE" \
      --messages $((count * 10)) --duration "${WAIT}s" --cores 1 "${extra[@]}" --quiet >"$WORK/$tag.c.out" 2>&1 &
    C_LG_PID=$!
    sleep 0.5
  fi
  snap0=$(cpu_snap)
  timeout "$WAIT" "$LG" send --target "127.0.0.1:$A_PORT" --concurrency "$C" --per-conn 0 --size "$SIZE" \
    --messages "$count" --cores "$LG_CORES" "${extra[@]}" --quiet --json "$WORK/$tag.json" >"$WORK/$tag.out" 2>&1 || rc=$?
  busy=$(python3 -c "a, b = list(map(int, '$snap0'.split())), list(map(int, '$(cpu_snap)'.split())); print('/'.join(f'{100 * (b[i] - a[i]) / max(1, b[i + 1] - a[i + 1]):.0f}' for i in range(0, len(a), 2)))")
  acc=$(metric "$A_ADMIN" tern_messages_accepted_total)
  made=$(metric "$A_ADMIN" tern_shadow_copies_made_total)
  nonred=$(metric "$A_ADMIN" tern_non_redundant_accepts_total)
  failed=$(metric "$A_ADMIN" tern_shadow_copies_failed_total)
  shlat=$(metric "$A_ADMIN" tern_shadow_copy_seconds_sum)
  shcount=$(metric "$A_ADMIN" tern_shadow_copy_seconds_count)
  shlat=$(python3 -c "print(f'{$shlat * 1e6 / $shcount:.0f} us' if $shcount else '-')")
  held=-; bacc=-; bcpu=-; wb=-
  if [ "$conf" = S ]; then
    held=$(metric "$B_ADMIN" tern_shadow_copies_held_total)
    bacc=$(metric "$B_ADMIN" tern_messages_accepted_total)
    bcpu=$(cpu_s "$B_PID")
  fi
  acpu=$(cpu_s "$A_PID")
  if [ -n "$C_LG_PID" ]; then kill -TERM "$C_LG_PID" 2>/dev/null || true; wait "$C_LG_PID" 2>/dev/null || true; C_LG_PID=; fi
  stop_nodes
  wa=$(warns "$WORK/$tag.a.log"); [ "$conf" = S ] && wb=$(warns "$WORK/$tag.b.log")
  ok=$(python3 -c "import json; print(json.load(open('$WORK/$tag.json'))['messages']['ok'])" 2>/dev/null || echo 0)
  echo "$tag: loadgen rc $rc, $ok/$count got 250; A: accepted $acc, shadow copies made $made, failed $failed, non-redundant $nonred, mean time per shadow copy $shlat, ${acpu} s CPU, $wa WARN/ERROR; B: held $held, accepted $bacc, ${bcpu} s CPU, $wb WARN/ERROR" >>"$WORK/checks"
  if [ "$rc" != 0 ] || [ "$ok" != "$count" ] || [ "$acc" != "$count" ] || [ "$wa" != 0 ]; then BAD=1; fi
  if [ "$conf" = S ]; then
    if [ "$made" != "$count" ] || [ "$nonred" != 0 ] || [ "$failed" != 0 ] || [ "$held" != "$count" ] || [ "$wb" != 0 ]; then BAD=1; fi
  elif [ "$made" != 0 ]; then BAD=1; fi
  if [ "$wa" != 0 ]; then grep -E ' (WARN|ERROR) ' "$WORK/$tag.a.log" | head -3 | sed 's/^/    /' >>"$WORK/checks"; fi
  if [ "$conf" = S ] && [ "$wb" != 0 ]; then grep -E ' (WARN|ERROR) ' "$WORK/$tag.b.log" | head -3 | sed 's/^/    /' >>"$WORK/checks"; fi
  python3 - "$WORK/$tag.json" "$mode" "$conf" "$round" "${rate:-0}" "$acpu" "$bcpu" "$busy" >>"$WORK/results" <<'PY'
import json, sys
f, mode, conf, rnd, rate, acpu, bcpu, busy = sys.argv[1:]
try:
    s = json.load(open(f))
    e, t = s["latency_us"]["eod"], s["latency_us"]["transaction"]
    r = dict(mps=s["messages_per_second"], p50=e["p50"], p99=e["p99"], tp50=t["p50"], tp99=t["p99"])
except Exception:
    r = dict(mps=float("nan"), p50=float("nan"), p99=float("nan"), tp50=float("nan"), tp99=float("nan"))
r.update(mode=mode, conf=conf, round=int(rnd), rate=int(rate), acpu=acpu, bcpu=bcpu, busy=busy)
print(repr(r))
PY
  LAST_MPS=$(python3 -c "import json; print(int(json.load(open('$WORK/$tag.json'))['messages_per_second']))" 2>/dev/null || echo 0)
}

BAD=0
: >"$WORK/checks"; : >"$WORK/results"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now)
if [ "$WARMUP" -gt 0 ]; then
  start_nodes U warmup
  timeout "$WAIT" "$LG" send --target "127.0.0.1:$A_PORT" --concurrency "$C" --per-conn 0 --size "$SIZE" \
    --messages "$WARMUP" --cores "$LG_CORES" --quiet >/dev/null 2>&1 || true
  stop_nodes
fi
for round in $(seq "$ROUNDS"); do
  order="U S"; [ $((round % 2)) = 0 ] && order="S U"
  [ "$CONTROL" = 1 ] && order="$order D"
  for conf in $order; do
    run closed "$conf" "$round"
    [ "$conf" = U ] && U_MPS=$LAST_MPS
  done
  RATE=$(python3 -c "print(int($U_MPS * $RATE_FRACTION))")
  [ "$RATE" -ge 1 ] || { echo "round $round: no unshadowed throughput measured" >&2; exit 1; }
  for conf in $order; do run open "$conf" "$round" "$RATE"; done
  tail -n $((2 * $(echo $order | wc -w))) "$WORK/results" | python3 -c "
import ast, sys
for l in sys.stdin:
    r = ast.literal_eval(l)
    print(f\"round {r['round']} {r['mode']:6} {r['conf']}: {r['mps']:.0f} msgs/s, eod p50 {r['p50']} us, p99 {r['p99']} us\", file=sys.stderr)"
done
ELAPSED=$(python3 -c "print(f'{$(now) - $T_START:.0f}')")

echo
echo "tern-loadgen send --concurrency $C --per-conn 0 --size $SIZE --cores $LG_CORES: closed loop --messages $N; open loop --rate R --messages R*$OPEN_SECS (R = $RATE_FRACTION x U's closed-loop msgs/s in the same round); $ROUNDS rounds, $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED} s; loadavg before $LOAD0, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tern: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine smtp storage loadgen Cargo.lock 2>/dev/null || echo ' + uncommitted changes in the work tree'); A and B: tern serve --cores $NODE_CORES, [delivery] hold = true"
echo
python3 - "$WORK/results" "$C" <<'PY'
import ast, math, sys
C = sys.argv[2]
rs = [ast.literal_eval(l) for l in open(sys.argv[1]) if l.strip()]
def med(xs):
    xs = sorted(x for x in xs if not math.isnan(x))
    return xs[(len(xs) - 1) // 2] if xs else float("nan")
def get(mode, conf, k):
    return [r[k] for r in sorted(rs, key=lambda r: r["round"]) if r["mode"] == mode and r["conf"] == conf]
def ratios(mode, k):
    return [s / u if u else float("nan") for s, u in zip(get(mode, "S", k), get(mode, "U", k))]
name = {"U": "A alone (no shadow)", "S": "A + shadow on B", "D": "A alone, 2nd node C busy on the same disk (control)"}
confs = ["U", "S"] + (["D"] if get("closed", "D", "mps") else [])
rates = get("open", "U", "rate")
print("| load | node(s) | msgs/s (median) | all rounds | eod p50 us | eod p99 us | transaction p99 us | CPU s A / B (median) | busy % per CPU (each round) |")
print("|---|---|---:|---|---:|---:|---:|---|---|")
for mode in ("closed", "open"):
    for conf in confs:
        load = f"closed loop, {C} conns" if mode == "closed" else "fixed rate " + "/".join(map(str, rates)) + " msgs/s"
        mps = get(mode, conf, "mps")
        cpu_a = med([float(x) for x in get(mode, conf, "acpu")])
        cpu_b = "-" if conf != "S" else f"{med([float(x) for x in get(mode, conf, 'bcpu')]):.1f}"
        print(f"| {load} | {name[conf]} | {med(mps):.0f} | {' '.join(f'{x:.0f}' for x in mps)} | {med(get(mode, conf, 'p50')):.0f} | {med(get(mode, conf, 'p99')):.0f} | {med(get(mode, conf, 'tp99')):.0f} | {cpu_a:.1f} / {cpu_b} | {' '.join(get(mode, conf, 'busy'))} |")
print()
print("| shadowed / unshadowed (median of per-round ratios) | all rounds | target | met |")
print("|---|---|---|---|")
def line(what, xs, target, ok):
    m = med(xs)
    met = "-" if ok is None or math.isnan(m) else ("yes" if ok(m) else "**no**")
    print(f"| {what} | {' '.join(f'{x:.2f}' for x in xs)} | {target} | {met} |")
    return m
line("closed loop throughput", ratios("closed", "mps"), ">= 0.60", lambda m: m >= 0.60)
line("closed loop eod p50", ratios("closed", "p50"), "-", None)
line("closed loop eod p99", ratios("closed", "p99"), "-", None)
line("fixed rate eod p50", ratios("open", "p50"), "<= 1.25", lambda m: m <= 1.25)
line("fixed rate eod p99", ratios("open", "p99"), "<= 1.50", lambda m: m <= 1.50)
line("fixed rate msgs/s (both must hold the rate)", ratios("open", "mps"), "-", None)
line("fixed rate transaction p99 (incl. waiting for a connection)", ratios("open", "tp99"), "-", None)
if "D" in confs:
    def vs_d(mode, k):
        return [s / d if d else float("nan") for s, d in zip(get(mode, "S", k), get(mode, "D", k))]
    print()
    print("| shadowed / same-disk control D (median of per-round ratios) | all rounds |")
    print("|---|---|")
    for what, mode, k in (("closed loop throughput", "closed", "mps"), ("closed loop eod p50", "closed", "p50"),
                          ("closed loop eod p99", "closed", "p99"), ("fixed rate eod p50", "open", "p50"),
                          ("fixed rate eod p99", "open", "p99"), ("fixed rate msgs/s", "open", "mps")):
        xs = vs_d(mode, k)
        print(f"| {what} | {' '.join(f'{x:.2f}' for x in xs)} (median {med(xs):.2f}) |")
PY
echo
echo "Checks (every message 250; shadowed: copies made = sent, non-redundant 0, failed 0, held on B = sent):"
sed 's/^/  /' "$WORK/checks"
if [ "$BAD" = 0 ]; then echo "all runs: checks passed"; else echo "PROBLEMS above" >&2; exit 1; fi
