#!/usr/bin/env bash
# Operator actions (issue 15), in one run on this machine:
#
# Part R, Safety Net resubmission (one node, `tern serve --relay-to` a
# `tern-loadgen sink`, fresh data directory, [delivery] defaults:
# safety_net_hold_time 2d):
#   1. batch 1 then batch 2: N messages each (closed loop, --size SIZE),
#      each waited for until tern delivered all of it (sink side:
#      tern_delivered_recipients_total, queue empty); times between the
#      batches mark the windows W1 and W2 (whole seconds, strictly between
#      the batches' arrivals). "first delivery" row: N / (send start ->
#      all delivered) and tern CPU / N, the baseline of the same run.
#   2. `tern resubmit add --start W1 --end W1'` alone: time from the add to
#      the request's `resubmitted` = N and `delivered` = N (`GET /resubmit`,
#      what `tern resubmit list --json` prints; the server updates the
#      counts within 200 ms) and to tern_delivered_recipients_total +N
#      (`/metrics`, finer); msgs/s and tern CPU per resubmitted message.
#   3. acceptance: tern-loadgen send --rate RATE for LOAD_SECS_R alone
#      (baseline 1), then the same while W2 (another N messages) is
#      resubmitted (the add LOAD_LEAD s after the send starts), then alone
#      again (baseline 2); eod p50/p99 of each, ratios to both baselines,
#      and how much of the loaded send the resubmission overlapped.
# Part Q, `queue summary` on a large queue (a fresh node whose next hop is
#   a closed port; retry_initial = retry_max = host_down_* = 1h, so every
#   message is attempted once and then waits):
#   1. VmRSS of tern idle, M messages of QSIZE bytes (closed loop), VmRSS
#      once the queue settled (tern_queue_messages = M, nothing in
#      flight): bytes per queued message.
#   2. `tern queue summary --json` SUMMARY_REPEAT times: wall time (median),
#      tern's peak VmRSS during it (sampled every 5 ms), tern CPU per
#      summary; the summary must count M messages.
#   3. tern-loadgen send --rate RATE for LOAD_SECS alone, then with
#      `tern queue summary` back to back for the whole send: eod p50/p99.
#   4. (RESTART=1) SIGTERM, start again: time until the rebuilt queue has
#      all its messages, and VmRSS then.
#
# tern runs on CPU TERN_CPU (taskset; its one executor is pinned there),
# the load generators and the sink on CPU LG_CPU (tern-loadgen send pins
# executor 0 to CPU 0 whatever the mask), so with the default 1 core each
# has its own CPU; other work on the machine still shares them (loadavg is
# printed). Ratios are against baselines measured in the same run.
#
# Usage: bench/scripts/ops-bench.sh
# Knobs (env): N (100000), SIZE (1024), M (1000000), QSIZE (512),
# NODE_CORES (1; 2 = both CPUs, then no taskset), TERN_CPU (1), LG_CPU (0),
# RATE (500), LOAD_SECS (20: part Q's sends), LOAD_SECS_R (auto: part R's
# sends last as long as the resubmission alone took, at least 5 s, so the
# loaded one runs inside the resubmission), LOAD_LEAD (0.5), CONC (10: closed-loop
# connections), SUMMARY_REPEAT (3), RESTART (1), PARTS ("R Q"), WAIT (900:
# bound in seconds on every wait), ports BASE_PORT..BASE_PORT+5 (2791..).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${N:-100000}
SIZE=${SIZE:-1024}
M=${M:-1000000}
QSIZE=${QSIZE:-512}
NODE_CORES=${NODE_CORES:-1}
TERN_CPU=${TERN_CPU:-1}
LG_CPU=${LG_CPU:-0}
RATE=${RATE:-500}
LOAD_SECS=${LOAD_SECS:-20}
LOAD_LEAD=${LOAD_LEAD:-0.5}
LOAD_SECS_R=${LOAD_SECS_R:-auto}
CONC=${CONC:-10}
SUMMARY_REPEAT=${SUMMARY_REPEAT:-3}
RESTART=${RESTART:-1}
PARTS=${PARTS:-"R Q"}
WAIT=${WAIT:-900}
BASE_PORT=${BASE_PORT:-2791}
SINK_PORT=$BASE_PORT
SMTP_PORT=$((BASE_PORT + 1))
ADMIN_PORT=$((BASE_PORT + 2))
DEAD_PORT=$((BASE_PORT + 3))   # nothing listens here (checked)
ADMIN=127.0.0.1:$ADMIN_PORT

WORK=$(mktemp -d /tmp/ops-bench.XXXXXX)
TERN_PID=                      # processes this script started and has not
SINK_PID=                      # stopped yet (cleared once stopped)
LOAD_PID=
cleanup() {
  local p
  for p in $LOAD_PID $TERN_PID $SINK_PID; do kill -KILL "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release -q -p tern-engine -p tern-loadgen
# Copies: another session may rebuild target/release while this runs.
mkdir -p "$WORK/bin"
cp target/release/tern target/release/tern-loadgen "$WORK/bin/"
TERN=$WORK/bin/tern
LG=$WORK/bin/tern-loadgen
HZ=$(getconf CLK_TCK)

TERN_TASKSET=(); LG_TASKSET=()
if [ "$NODE_CORES" = 1 ] && command -v taskset >/dev/null && [ "$(nproc)" -gt 1 ]; then
  TERN_TASKSET=(taskset -c "$TERN_CPU"); LG_TASKSET=(taskset -c "$LG_CPU")
fi

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
metric() { # name -> sum over cores
  curl -s --max-time 5 "http://$ADMIN/metrics" | awk -v n="$1" '$1 == n || $1 ~ "^"n"[{]" {s += $2} END {print s + 0}'
}
cpu_s() { awk -v hz="$HZ" '{printf "%.3f", ($14 + $15) / hz}' "/proc/$1/stat" 2>/dev/null || echo nan; }
rss_kb() { awk '/^VmRSS:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
anon_kb() { awk '/^RssAnon:/ {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
warns() { local c; c=$(grep -cE 'level=(warn|error) ' "$1" 2>/dev/null || true); echo "${c:-0}"; }
py() { python3 -c "$@"; }
# A whole second strictly after everything so far and before everything
# after this returns (it sleeps past it), as RFC 3339.
stamp() { py "
import math, time
t = time.time(); s = math.floor(t) + 1
time.sleep(s - t + 0.05)
print(time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(s)))"; }
# wait_until NAME TARGET: until the metric sum >= TARGET (bounded by WAIT).
wait_metric() {
  local i
  for i in $(seq $((WAIT * 10))); do
    [ "$(metric "$1")" -ge "$2" ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for $1 >= $2 (at $(metric "$1"))" >&2; return 1
}
# queue empty (or, with an argument, at that size) and nothing in flight
wait_queue() {
  local want=${1:-0} i
  for i in $(seq $((WAIT * 10))); do
    [ "$(metric tern_queue_messages)" = "$want" ] && [ "$(metric tern_queue_in_flight)" = 0 ] && return 0
    sleep 0.1
  done
  echo "timed out waiting for the queue to reach $want (at $(metric tern_queue_messages), in flight $(metric tern_queue_in_flight))" >&2; return 1
}

# The helper: poll a resubmission request, run summaries with RSS sampling.
cat >"$WORK/helper.py" <<'PY'
import json, statistics, subprocess, sys, threading, time, urllib.request

HZ = int(subprocess.check_output(["getconf", "CLK_TCK"]))

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / HZ

def rss_kb(pid):
    for l in open(f"/proc/{pid}/status"):
        if l.startswith("VmRSS:"):
            return int(l.split()[1])
    return 0

def get(url):
    with urllib.request.urlopen(url, timeout=5) as r:
        return r.read().decode()

def metric(admin, name):
    s = 0
    for l in get(f"http://{admin}/metrics").splitlines():
        p = l.split()
        if len(p) == 2 and (p[0] == name or p[0].startswith(name + "{")):
            s += float(p[1])
    return s

def resubmit(admin, rid, n, pid, t0, cpu0, deliv0, timeout):
    """Polls GET /resubmit and /metrics every 50 ms from t0 (wall clock)
    until the request shows resubmitted = delivered = n and the delivered
    recipients metric rose by n; prints the times (s after t0) and CPU."""
    out = dict(t_resubmitted=None, t_delivered=None, t_metric=None, cpu_resubmitted=None, cpu_delivered=None, cpu_metric=None)
    r = {}
    while time.time() - t0 < timeout:
        t = time.time()
        reqs = json.loads(get(f"http://{admin}/resubmit"))["requests"]
        r = next((q for q in reqs if q["id"] == rid), {})
        d = metric(admin, "tern_delivered_recipients_total") - deliv0
        c = cpu(pid) - cpu0
        if out["t_resubmitted"] is None and r.get("resubmitted", 0) >= n:
            out["t_resubmitted"], out["cpu_resubmitted"] = t - t0, c
        if out["t_delivered"] is None and r.get("delivered", 0) >= n:
            out["t_delivered"], out["cpu_delivered"] = t - t0, c
        if out["t_metric"] is None and d >= n:
            out["t_metric"], out["cpu_metric"] = t - t0, c
        if None not in (out["t_resubmitted"], out["t_delivered"], out["t_metric"]):
            break
        time.sleep(max(0, 0.05 - (time.time() - t)))
    out.update(state=r.get("state"), matched=r.get("matched"), resubmitted=r.get("resubmitted"),
               delivered=r.get("delivered"), cores_pending=r.get("cores_pending"))
    print(json.dumps(out))

def summary_once(pid, cmd):
    peak = [rss_kb(pid)]
    stop = threading.Event()
    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_kb(pid))
            except OSError:
                return
            time.sleep(0.005)
    th = threading.Thread(target=sample); th.start()
    c0, t0 = cpu(pid), time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    c = cpu(pid) - c0
    stop.set(); th.join()
    try:
        msgs = json.loads(p.stdout)["messages"]
    except Exception:
        msgs = None
    return dict(wall=wall, cpu=c, peak_kb=peak[0], rc=p.returncode, messages=msgs,
                err=p.stderr.strip()[-300:])

def summaries(pid, repeat, cmd):
    runs = [summary_once(pid, cmd) for _ in range(repeat)]
    print(json.dumps(dict(runs=runs, wall_median=statistics.median(r["wall"] for r in runs),
                          cpu_median=statistics.median(r["cpu"] for r in runs),
                          peak_kb=max(r["peak_kb"] for r in runs))))

def summary_loop(pid, loadpid, max_count, max_secs, cmd):
    """Summaries back to back while process loadpid runs (bounded)."""
    runs, t0 = [], time.monotonic()
    def alive():
        try:
            return open(f"/proc/{loadpid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False
    while alive() and len(runs) < max_count and time.monotonic() - t0 < max_secs:
        runs.append(summary_once(pid, cmd))
    print(json.dumps(dict(count=len(runs), wall_median=statistics.median(r["wall"] for r in runs) if runs else None,
                          wall_max=max((r["wall"] for r in runs), default=None),
                          bad=sum(1 for r in runs if r["rc"] != 0 or r["messages"] is None),
                          errors=[r["err"] for r in runs if r["rc"] != 0][:3])))

if __name__ == "__main__":
    a = sys.argv[1:]
    if a[0] == "resubmit":
        resubmit(a[1], int(a[2]), int(a[3]), int(a[4]), float(a[5]), float(a[6]), float(a[7]), float(a[8]))
    elif a[0] == "summaries":
        summaries(int(a[1]), int(a[2]), a[a.index("--") + 1:])
    elif a[0] == "summary-loop":
        summary_loop(int(a[1]), int(a[2]), int(a[3]), float(a[4]), a[a.index("--") + 1:])
PY
H() { python3 "$WORK/helper.py" "$@"; }
jget() { py "import json, sys; d = json.load(open('$1')); print($2)"; }

# start_tern TAG DATA-DIR RELAY-TO [CONFIG]
start_tern() {
  local cfg=()
  [ -n "${4:-}" ] && cfg=(--config "$4")
  "${TERN_TASKSET[@]}" "$TERN" serve "${cfg[@]}" --data-dir "$2" --listen "127.0.0.1:$SMTP_PORT" \
    --admin-listen "$ADMIN" --cores "$NODE_CORES" --relay-to "$3" 2>>"$WORK/$1.log" &
  TERN_PID=$!
  wait_port "$SMTP_PORT" || { echo "tern did not listen on $SMTP_PORT" >&2; tail "$WORK/$1.log" >&2; exit 1; }
  wait_port "$ADMIN_PORT" || { echo "tern admin did not listen on $ADMIN_PORT" >&2; exit 1; }
}
# send TAG ARGS...: closed or open loop, JSON into $WORK/TAG.json; sets SENT_OK
send() {
  local tag=$1 rc=0; shift
  timeout "$WAIT" "${LG_TASKSET[@]}" "$LG" send --target "127.0.0.1:$SMTP_PORT" --cores 1 --quiet \
    --json "$WORK/$tag.json" "$@" >"$WORK/$tag.out" 2>&1 || rc=$?
  SENT_OK=$(jget "$WORK/$tag.json" "d['messages']['ok']" 2>/dev/null || echo 0)
  [ "$rc" = 0 ] || { echo "$tag: tern-loadgen rc $rc" >>"$WORK/checks"; BAD=1; }
}
# fixed-rate send in the background: sets LOAD_PID; load_wait TAG reaps it.
load_start() {
  "${LG_TASKSET[@]}" "$LG" send --target "127.0.0.1:$SMTP_PORT" --cores 1 --quiet --rate "$RATE" \
    --messages $((RATE * LSECS)) --concurrency 100 --per-conn 0 --size "$2" \
    --json "$WORK/$1.json" >"$WORK/$1.out" 2>&1 &
  LOAD_PID=$!
}
load_wait() {
  local rc=0 i
  for i in $(seq $((WAIT * 10))); do kill -0 "$LOAD_PID" 2>/dev/null || break; sleep 0.1; done
  kill -KILL "$LOAD_PID" 2>/dev/null || true
  wait "$LOAD_PID" || rc=$?
  LOAD_PID=
  SENT_OK=$(jget "$WORK/$1.json" "d['messages']['ok']" 2>/dev/null || echo 0)
  [ "$rc" = 0 ] || { echo "$1: tern-loadgen rc $rc" >>"$WORK/checks"; BAD=1; }
  [ "$SENT_OK" = $((RATE * LSECS)) ] || { echo "$1: $SENT_OK of $((RATE * LSECS)) got 250" >>"$WORK/checks"; BAD=1; }
}
# lowest per-second completions, first and last (partial) seconds left out
minsec() { jget "$WORK/$1.json" "min(d['per_second'][1:-1]) if len(d['per_second']) > 2 else 'nan'" 2>/dev/null || echo nan; }
lat() { jget "$WORK/$1.json" "d['latency_us']['eod']['$2']" 2>/dev/null || echo nan; }
mps() { jget "$WORK/$1.json" "round(d['messages_per_second'])" 2>/dev/null || echo nan; }
ratio() { py "import math; a, b = float('$1'), float('$2'); print('nan' if not b or math.isnan(a) or math.isnan(b) else f'{a / b:.2f}')"; }
fmt() { py "import math; x = float('$1'); print('nan' if math.isnan(x) else f'{x:$2}')"; }

BAD=0
: >"$WORK/checks"; : >"$WORK/rows"
row() { echo "$*" >>"$WORK/rows"; }
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now)
LOADN=$((RATE * LOAD_SECS))

# --- Part R: resubmission --------------------------------------------------
if [[ " $PARTS " == *" R "* ]]; then
  echo "part R: $N + $N messages of $SIZE bytes, then resubmissions" >&2
  "${LG_TASKSET[@]}" "$LG" sink --listen "127.0.0.1:$SINK_PORT" --cores 1 --quiet --duration "$((WAIT * 4))s" \
    --json "$WORK/sink.json" >"$WORK/sink.out" 2>&1 &
  SINK_PID=$!
  wait_port "$SINK_PORT" || { echo "sink did not listen on $SINK_PORT" >&2; exit 1; }
  # no inbound TLS: nothing here uses it (and no self-signed-certificate WARN)
  printf '[tls]\nself_signed = false\n' >"$WORK/r.toml"
  start_tern r "$WORK/data-r" "127.0.0.1:$SINK_PORT" "$WORK/r.toml"
  W=("$(stamp)")
  FILL_MPS=(); FILL_CPU=()
  for b in 1 2; do
    c0=$(cpu_s "$TERN_PID"); d0=$(metric tern_delivered_recipients_total); t0=$(now)
    send "fill$b" --messages "$N" --concurrency "$CONC" --per-conn 0 --size "$SIZE"
    [ "$SENT_OK" = "$N" ] || { echo "fill$b: $SENT_OK of $N got 250" >>"$WORK/checks"; BAD=1; }
    wait_metric tern_delivered_recipients_total $((d0 + N)) || BAD=1
    t1=$(now); c1=$(cpu_s "$TERN_PID")
    wait_queue || BAD=1
    FILL_MPS+=("$(py "print(f'{$N / ($t1 - $t0):.0f}')")")
    FILL_CPU+=("$(py "print(f'{($c1 - $c0) / $N * 1e6:.0f}')")")
    W+=("$(stamp)")
    echo "  batch $b: ${FILL_MPS[-1]} msgs/s accepted and delivered, ${FILL_CPU[-1]} us CPU/msg; window ${W[-2]} .. ${W[-1]}" >&2
  done
  sleep 1

  # R2: resubmission of batch 1 alone
  resub() { # WINDOW-START WINDOW-END TAG -> $WORK/TAG.res (JSON)
    local c0 d0 t0 id
    c0=$(cpu_s "$TERN_PID"); d0=$(metric tern_delivered_recipients_total); t0=$(now)
    "$TERN" resubmit add --start "$1" --end "$2" --admin "$ADMIN" --data-dir "$WORK/data-r" --json >"$WORK/$3.add" 2>&1 \
      || { echo "$3: resubmit add failed: $(cat "$WORK/$3.add")" >>"$WORK/checks"; BAD=1; return 0; }
    id=$(jget "$WORK/$3.add" "d['id']")
    H resubmit "$ADMIN" "$id" "$N" "$TERN_PID" "$t0" "$c0" "$d0" "$WAIT" >"$WORK/$3.res"
    "$TERN" resubmit list --admin "$ADMIN" --data-dir "$WORK/data-r" --json >"$WORK/$3.list" 2>&1 || true
    echo "$3: request $id $(jget "$WORK/$3.res" "f\"state {d['state']}, matched {d['matched']}, resubmitted {d['resubmitted']}, delivered {d['delivered']} (want $N each), cores pending {d['cores_pending']}\"")" >>"$WORK/checks"
    jget "$WORK/$3.res" "d['state'] == 'done' and d['matched'] == d['resubmitted'] == d['delivered'] == $N and d['t_metric'] is not None" | grep -q True || BAD=1
  }
  resub "${W[0]}" "${W[1]}" r1
  wait_queue || BAD=1
  echo "  resubmission alone: $(cat "$WORK/r1.res")" >&2

  # R3: acceptance with and without a resubmission. The send should run
  # inside the resubmission: auto = as long as the resubmission alone took
  # (whole seconds, at least 5); under load it takes longer.
  if [ "$LOAD_SECS_R" = auto ]; then
    LSECS=$(jget "$WORK/r1.res" "max(5, round(d['t_metric'] or 0))")
  else LSECS=$LOAD_SECS_R; fi
  LOADN_R=$((RATE * LSECS)); LSECS_R=$LSECS
  load_start base1 "$SIZE"; load_wait base1
  wait_queue || BAD=1
  load_start loaded "$SIZE"; LT0=$(now)
  sleep "$LOAD_LEAD"
  resub "${W[1]}" "${W[2]}" r2
  load_wait loaded; LT1=$(now)
  wait_queue || BAD=1
  load_start base2 "$SIZE"; load_wait base2
  wait_queue || BAD=1
  echo "  resubmission under load: $(cat "$WORK/r2.res")" >&2

  acc=$(metric tern_messages_accepted_total); del=$(metric tern_delivered_recipients_total)
  rsm=$(metric tern_resubmitted_messages_total); bnc=$(metric tern_bounced_recipients_total)
  dsn=$(metric tern_dsns_queued_total)
  R_CPU=$(cpu_s "$TERN_PID")
  stop_pid "$TERN_PID" 30; TERN_PID=
  sleep 0.5
  stop_pid "$SINK_PID" 10; SINK_PID=
  want_acc=$((2 * N + 3 * LOADN_R)); want_del=$((4 * N + 3 * LOADN_R))
  sink_total=$(jget "$WORK/sink.json" "d['messages']" 2>/dev/null || echo 0)
  sink_lost=$(jget "$WORK/sink.json" "sum(r['lost'] for r in d['runs'])" 2>/dev/null || echo '?')
  sink_runs=$(jget "$WORK/sink.json" "'; '.join(f\"{r['received']} received, {r['distinct']} distinct, {r['duplicates']} dup, {r['lost']} lost\" for r in d['runs'])" 2>/dev/null || echo '?')
  wr=$(warns "$WORK/r.log")
  echo "part R: tern accepted $acc (want $want_acc), delivered $del recipients (want $want_del), resubmitted $rsm (want $((2 * N))), bounced $bnc, DSNs $dsn, $wr WARN/ERROR log lines, ${R_CPU} s CPU; sink: $sink_total messages (want $want_del), per run: $sink_runs" >>"$WORK/checks"
  [ "$acc" = "$want_acc" ] && [ "$del" = "$want_del" ] && [ "$rsm" = $((2 * N)) ] && [ "$bnc" = 0 ] && [ "$dsn" = 0 ] \
    && [ "$sink_total" = "$want_del" ] && [ "$sink_lost" = 0 ] && [ "$wr" = 0 ] || BAD=1
  [ "$wr" = 0 ] || grep -E ' (WARN|ERROR) ' "$WORK/r.log" | head -5 | sed 's/^/    /' >>"$WORK/checks"

  # rows
  fill_mps=$(printf '%s\n' "${FILL_MPS[@]}" | sort -g | head -1); fill_cpu=$(printf '%s\n' "${FILL_CPU[@]}" | sort -g | tail -1)
  r1() { jget "$WORK/r1.res" "$1"; }
  r2() { jget "$WORK/r2.res" "$1"; }
  res_mps=$(r1 "f\"{$N / d['t_resubmitted']:.0f}\" if d['t_resubmitted'] else 'nan'")
  del_mps=$(r1 "f\"{$N / d['t_metric']:.0f}\" if d['t_metric'] else 'nan'")
  del_mps_req=$(r1 "f\"{$N / d['t_delivered']:.0f}\" if d['t_delivered'] else 'nan'")
  res_cpu=$(r1 "f\"{d['cpu_metric'] / $N * 1e6:.0f}\" if d['cpu_metric'] is not None else 'nan'")
  row "| R | first delivery of a batch (accept + relay), closed loop $CONC conns, $N x $SIZE B (the two batches: ${FILL_MPS[*]} msgs/s; ${FILL_CPU[*]} us) | $fill_mps | 1.00 | $fill_cpu | - |"
  row "| R | resubmission alone, queued again (request's resubmitted = $N after $(r1 "f\"{d['t_resubmitted']:.2f}\"") s) | $res_mps | $(ratio "$res_mps" "$fill_mps") | $(r1 "f\"{d['cpu_resubmitted'] / $N * 1e6:.0f}\"") | - |"
  row "| R | resubmission alone, delivered (metric +$N after $(r1 "f\"{d['t_metric']:.2f}\"") s; request's delivered = $N after $(r1 "f\"{d['t_delivered']:.2f}\"") s = $del_mps_req msgs/s) | $del_mps | $(ratio "$del_mps" "$fill_mps") | $res_cpu | - |"
  lmps=$(r2 "f\"{$N / d['t_metric']:.0f}\" if d['t_metric'] else 'nan'")
  overlap=$(r2 "f\"{min(1.0, (min($LT1, $LT0 + $LOAD_LEAD + (d['t_metric'] or 1e9)) - $LT0 - $LOAD_LEAD) / ($LT1 - $LT0)) * 100:.0f}\"")
  row "| R | resubmission under the fixed-rate load, delivered (metric +$N after $(r2 "f\"{d['t_metric']:.2f}\" if d['t_metric'] else 'nan'") s; resubmitted after $(r2 "f\"{d['t_resubmitted']:.2f}\" if d['t_resubmitted'] else 'nan'") s) | $lmps | $(ratio "$lmps" "$fill_mps") | $(r2 "f\"{d['cpu_metric'] / $N * 1e6:.0f}\" if d['cpu_metric'] is not None else 'nan'") (load included) | - |"
  for t in base1 loaded base2; do
    case $t in
      base1) what="fixed rate $RATE msgs/s x ${LSECS} s, alone (baseline 1)";;
      loaded) what="fixed rate $RATE msgs/s x ${LSECS} s, $N resubmitted from ${LOAD_LEAD} s in (the resubmission ran during ${overlap}% of the send)";;
      base2) what="fixed rate $RATE msgs/s x ${LSECS} s, alone (baseline 2)";;
    esac
    row "| R | $what | $(mps $t) (lowest second $(minsec $t)) | - | - | eod p50 $(lat $t p50) us, p99 $(lat $t p99) us, max $(lat $t max) us |"
  done
  row "| R | loaded / baseline 1, / baseline 2 | | | | p50 $(ratio "$(lat loaded p50)" "$(lat base1 p50)") / $(ratio "$(lat loaded p50)" "$(lat base2 p50)"), p99 $(ratio "$(lat loaded p99)" "$(lat base1 p99)") / $(ratio "$(lat loaded p99)" "$(lat base2 p99)") |"
  rm -rf "$WORK/data-r"
fi

# --- Part Q: queue summary on a large queue --------------------------------
if [[ " $PARTS " == *" Q "* ]]; then
  echo "part Q: $M messages of $QSIZE bytes queued behind a closed next hop" >&2
  if (exec 3<>"/dev/tcp/127.0.0.1/$DEAD_PORT") 2>/dev/null; then echo "port $DEAD_PORT is in use; set BASE_PORT" >&2; exit 1; fi
  printf '[delivery]\nretry_initial = "1h"\nretry_max = "1h"\nhost_down_initial = "1h"\nhost_down_max = "1h"\n[tls]\nself_signed = false\n' >"$WORK/q.toml"
  start_tern q "$WORK/data-q" "127.0.0.1:$DEAD_PORT" "$WORK/q.toml"
  sleep 1
  RSS0=$(rss_kb "$TERN_PID"); ANON0=$(anon_kb "$TERN_PID")
  c0=$(cpu_s "$TERN_PID"); t0=$(now)
  send qfill --messages "$M" --concurrency "$CONC" --per-conn 0 --size "$QSIZE"
  t1=$(now)
  [ "$SENT_OK" = "$M" ] || { echo "qfill: $SENT_OK of $M got 250" >>"$WORK/checks"; BAD=1; }
  wait_queue "$M" || BAD=1
  t2=$(now); c1=$(cpu_s "$TERN_PID")
  sleep 2
  RSS1=$(rss_kb "$TERN_PID"); ANON1=$(anon_kb "$TERN_PID")
  QFILL_MPS=$(py "print(f'{$M / ($t1 - $t0):.0f}')"); QSETTLE=$(py "print(f'{$t2 - $t1:.1f}')")
  QFILL_CPU=$(py "print(f'{($c1 - $c0) / $M * 1e6:.0f}')")
  echo "  filled: $QFILL_MPS msgs/s, settled $QSETTLE s later, RSS $RSS0 -> $RSS1 kB" >&2
  SUMCMD=("$TERN" queue summary --admin "$ADMIN" --data-dir "$WORK/data-q" --json)
  H summaries "$TERN_PID" "$SUMMARY_REPEAT" -- "${SUMCMD[@]}" >"$WORK/sum.json"
  "${SUMCMD[@]}" >"$WORK/sum.out" 2>&1 || true
  "$TERN" queue summary --admin "$ADMIN" --data-dir "$WORK/data-q" >"$WORK/sum.txt" 2>&1 || true
  sm() { jget "$WORK/sum.json" "$1"; }
  echo "queue summary x $SUMMARY_REPEAT: messages counted $(sm "[r['messages'] for r in d['runs']]") (want $M), rc $(sm "[r['rc'] for r in d['runs']]"); text output: $(head -3 "$WORK/sum.txt" | tr '\n' '|' | cut -c1-300)" >>"$WORK/checks"
  sm "all(r['messages'] == $M and r['rc'] == 0 for r in d['runs'])" | grep -q True || BAD=1
  RSS2=$(rss_kb "$TERN_PID")

  LSECS=$LOAD_SECS
  load_start qbase "$QSIZE"; load_wait qbase
  wait_queue $((M + LOADN)) || BAD=1
  load_start qloaded "$QSIZE"
  H summary-loop "$TERN_PID" "$LOAD_PID" 10000 "$((LOAD_SECS * 3))" -- "${SUMCMD[@]}" >"$WORK/sumloop.json"
  load_wait qloaded
  wait_queue $((M + 2 * LOADN)) || BAD=1
  sl() { jget "$WORK/sumloop.json" "$1"; }
  echo "summaries during the loaded send: $(sl "d['count']") ($(sl "d['bad']") failed: $(sl "d['errors']"))" >>"$WORK/checks"
  [ "$(sl "d['bad']")" = 0 ] || BAD=1

  acc=$(metric tern_messages_accepted_total); del=$(metric tern_delivered_recipients_total)
  dfr=$(metric tern_deferred_total); qm=$(metric tern_queue_messages)
  Q_CPU=$(cpu_s "$TERN_PID")
  if [ "$RESTART" = 1 ]; then
    stop_pid "$TERN_PID" 60; TERN_PID=
    t0=$(now)
    start_tern q "$WORK/data-q" "127.0.0.1:$DEAD_PORT" "$WORK/q.toml"
    wait_queue $((M + 2 * LOADN)) || BAD=1
    t1=$(now); sleep 2
    RSS3=$(rss_kb "$TERN_PID"); ANON3=$(anon_kb "$TERN_PID"); RESTART_S=$(py "print(f'{$t1 - $t0:.1f}')")
    H summaries "$TERN_PID" 1 -- "${SUMCMD[@]}" >"$WORK/sum2.json"
    SUM2=$(jget "$WORK/sum2.json" "f\"{d['wall_median']:.2f}\"")
  fi
  stop_pid "$TERN_PID" 60; TERN_PID=
  wq=$(grep -cE ' ERROR ' "$WORK/q.log" || true); wwq=$(grep -cE ' WARN ' "$WORK/q.log" || true)
  echo "part Q: tern accepted $acc (want $((M + 2 * LOADN))), queued $qm, delivered $del (want 0), deferred $dfr, ${Q_CPU} s CPU, ${wwq:-0} WARN and ${wq:-0} ERROR log lines" >>"$WORK/checks"
  [ "$acc" = $((M + 2 * LOADN)) ] && [ "$qm" = $((M + 2 * LOADN)) ] && [ "$del" = 0 ] && [ "${wq:-0}" = 0 ] || BAD=1
  [ "${wq:-0}" = 0 ] || grep -E ' ERROR ' "$WORK/q.log" | head -5 | sed 's/^/    /' >>"$WORK/checks"
  [ "${wwq:-0}" = 0 ] || grep -E ' WARN ' "$WORK/q.log" | sort | uniq -c | sort -rn | head -3 | cut -c1-300 | sed 's/^/    /' >>"$WORK/checks"

  row "| Q | fill: $M x $QSIZE B, closed loop $CONC conns (settled: every message attempted once, $QSETTLE s after the send) | $QFILL_MPS | - | $QFILL_CPU | VmRSS $((RSS0 / 1024)) MiB idle -> $((RSS1 / 1024)) MiB queued: $(py "print(f'{($RSS1 - $RSS0) * 1024 / $M:.0f}')") B per queued message (RssAnon $((ANON0 / 1024)) -> $((ANON1 / 1024)) MiB: $(py "print(f'{($ANON1 - $ANON0) * 1024 / $M:.0f}')") B) |"
  row "| Q | \`tern queue summary --json\` on $M queued, x $SUMMARY_REPEAT (wall $(sm "' '.join(f\"{r['wall']:.2f}\" for r in d['runs'])") s) | median $(sm "f\"{d['wall_median']:.2f}\"") s | - | $(sm "f\"{d['cpu_median'] * 1e3:.0f}\"") ms tern CPU per summary ($(sm "f\"{d['cpu_median'] / $M * 1e9:.0f}\"") ns per message) | peak VmRSS during them $(( $(sm "d['peak_kb']") / 1024 )) MiB (+$(( ($(sm "d['peak_kb']") - RSS1) / 1024 )) MiB); after $((RSS2 / 1024)) MiB |"
  row "| Q | fixed rate $RATE msgs/s x ${LOAD_SECS} s, $M queued, alone (baseline) | $(mps qbase) (lowest second $(minsec qbase)) | - | - | eod p50 $(lat qbase p50) us, p99 $(lat qbase p99) us, max $(lat qbase max) us |"
  row "| Q | same, with \`queue summary\` back to back ($(sl "d['count']") summaries, median $(sl "f\"{d['wall_median']:.2f}\"") s, max $(sl "f\"{d['wall_max']:.2f}\"") s) | $(mps qloaded) (lowest second $(minsec qloaded)) | - | - | eod p50 $(lat qloaded p50) us, p99 $(lat qloaded p99) us, max $(lat qloaded max) us |"
  row "| Q | with summaries / baseline | | | | p50 $(ratio "$(lat qloaded p50)" "$(lat qbase p50)"), p99 $(ratio "$(lat qloaded p99)" "$(lat qbase p99)") |"
  if [ "$RESTART" = 1 ]; then
    row "| Q | restart with $((M + 2 * LOADN)) queued: start until the rebuilt queue holds them all ${RESTART_S} s; one summary then ${SUM2} s | - | - | - | VmRSS after the rebuild $((RSS3 / 1024)) MiB: $(py "print(f'{($RSS3 - $RSS0) * 1024 / ($M + 2 * $LOADN):.0f}')") B per queued message over idle (RssAnon $((ANON3 / 1024)) MiB: $(py "print(f'{($ANON3 - $ANON0) * 1024 / ($M + 2 * $LOADN):.0f}')") B; the rest is file-backed: mapped log segments) |"
  fi
  rm -rf "$WORK/data-q"
fi
ELAPSED=$(py "print(f'{$(now) - $T_START:.0f}')")

echo
echo "ops-bench: N=$N SIZE=$SIZE M=$M QSIZE=$QSIZE NODE_CORES=$NODE_CORES RATE=$RATE LOAD_SECS=$LOAD_SECS LOAD_SECS_R=$LOAD_SECS_R${LSECS_R:+ (${LSECS_R} s)} LOAD_LEAD=$LOAD_LEAD CONC=$CONC; tern on CPU ${TERN_TASKSET[*]:-any}, load generators ${LG_TASKSET[*]:-any}; $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED} s; loadavg before $LOAD0, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tern: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine smtp storage loadgen 2>/dev/null || echo ' + uncommitted changes in the work tree')"
echo
echo "| part | what | msgs/s | vs first delivery | tern CPU us/msg | latency / memory |"
echo "|---|---|---:|---:|---:|---|"
cat "$WORK/rows"
echo
echo "Checks:"
sed 's/^/  /' "$WORK/checks"
if [ "$BAD" = 0 ]; then echo "all checks passed"; else echo "PROBLEMS above" >&2; exit 1; fi
