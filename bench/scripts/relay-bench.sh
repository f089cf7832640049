#!/usr/bin/env bash
# End-to-end relay throughput (issue 4), in one run, on this machine:
#   smtp-source -> smtp-sink                        (no relay: the client's ceiling)
#   smtp-source -> Postfix (relayhost = the sink) -> smtp-sink
#   smtp-source -> tern serve --cores 1 (--relay-to the sink) -> smtp-sink
#   smtp-source -> tern serve --cores 2 (--relay-to the sink) -> smtp-sink
# End to end = from the moment smtp-source is started until the sink has
# received all N messages (smtp-sink -c writes its counter after every
# ".", a poller reads it every 5 ms), not until smtp-source has finished.
# After N arrived (or the wait timed out) the relay's queue must drain and
# the sink stay quiet for QUIET seconds; its final count is reported
# (received / lost / extra = duplicates). Each row must receive exactly N.
#
# Postfix is a private instance (own config, queue and data directories
# in a temp dir, smtpd on 127.0.0.1:PF_PORT, loopback only, stock
# parameters otherwise; chroot off), so the system Postfix is not touched.
#
# Needs root and postfix (smtp-source, smtp-sink; installed from Debian
# when missing). Usage:
#   bench/scripts/relay-bench.sh [MESSAGES] [SESSIONS] [SIZE]
# Defaults: 20000 messages, 10 sessions, 4096 bytes (the issue's command:
# smtp-source -s 10 -m 20000 -l 4096 -d). ROUNDS (default 3) interleaves
# all configurations per round; the table shows medians, and the ratio is
# the median of the per-round ratios. TERN_CONFIG=FILE passes --config to
# tern (default: none, i.e. [delivery] defaults). Every wait is bounded
# (WAIT, default 600 s per measurement).
set -euo pipefail
cd "$(dirname "$0")/../.."

N=${1:-20000}
SESSIONS=${2:-10}
SIZE=${3:-4096}
ROUNDS=${ROUNDS:-3}
WAIT=${WAIT:-600}
QUIET=${QUIET:-1}
SINK_PORT=${SINK_PORT:-2561}
TERN_PORT=${TERN_PORT:-2562}
ADMIN_PORT=${ADMIN_PORT:-2563}
PF_PORT=${PF_PORT:-2564}
TERN_CONFIG=${TERN_CONFIG:-}

[ "$(id -u)" = 0 ] || { echo "relay-bench: needs root (Postfix instance, smtp-sink -u nobody)" >&2; exit 1; }
export PATH="$PATH:/usr/sbin:/sbin"
if ! command -v smtp-source >/dev/null && command -v apt-get >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postfix >/dev/null
fi
command -v smtp-source >/dev/null || { echo "smtp-source not found: apt-get install postfix" >&2; exit 1; }

# Postfix daemons (user postfix) must traverse the work dir: world-readable.
WORK=$(mktemp -d /tmp/relay-bench.XXXXXX)
chmod 755 "$WORK"
PF="$WORK/postfix"            # config_directory of the private instance
SINK_PID=                     # the processes this script started and has
TERN_PID=                     # not stopped yet (cleared once stopped)
MEAS_PID=
PF_STARTED=0
cleanup() {
  local p
  for p in $MEAS_PID $TERN_PID $SINK_PID; do kill -KILL "$p" 2>/dev/null || true; done
  if [ "$PF_STARTED" = 1 ]; then
    timeout 30 postfix -c "$PF" stop >/dev/null 2>&1 || true
    p=$(cat "$WORK/pfqueue/pid/master.pid" 2>/dev/null | tr -d ' ' || true)
    if [ -n "$p" ] && kill -0 "$p" 2>/dev/null; then kill -KILL "$p" 2>/dev/null || true; fi
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

cargo build --release -q -p tern-engine -p tern-loadgen
TERN=target/release/tern

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

# measure.py COUNTFILE N TIMEOUT -- smtp-source ARGS...
# Starts smtp-source (t0 = just before), polls smtp-sink's counter file,
# prints "src_seconds src_rc e2e_seconds count" (e2e_seconds "nan" if the
# sink did not reach N within TIMEOUT). smtp-source dies with it
# (PR_SET_PDEATHSIG) and is killed if still running after TIMEOUT.
cat >"$WORK/measure.py" <<'PY'
import ctypes, os, re, signal, subprocess, sys, time
path, n, timeout = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
cmd = sys.argv[sys.argv.index("--") + 1:]
libc = ctypes.CDLL(None)
def pdeathsig():
    libc.prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
child = None
def bye(*_):
    if child and child.poll() is None:
        child.kill()
    sys.exit(1)
signal.signal(signal.SIGTERM, bye)
pat = re.compile(rb"mesg=(\d+)")
f = open(path, "rb")
def count():
    size = os.fstat(f.fileno()).st_size
    f.seek(max(0, size - 96))
    m = pat.findall(f.read())
    return int(m[-1]) if m else 0
t0 = time.monotonic()
child = subprocess.Popen(cmd, preexec_fn=pdeathsig)
src_s, src_rc, e2e_s, c = "nan", "", "nan", 0
while True:
    c = count()
    t = time.monotonic() - t0
    if src_rc == "" and child.poll() is not None:
        src_s, src_rc = f"{t:.3f}", str(child.returncode)
    if c >= n:
        e2e_s = f"{t:.3f}"
        break
    if t > timeout:
        break
    time.sleep(0.005)
if src_rc == "":
    try:
        child.wait(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        src_s, src_rc = f"{time.monotonic() - t0:.3f}", str(child.returncode)
    except subprocess.TimeoutExpired:
        child.kill(); child.wait(); src_rc = "killed"
print(src_s, src_rc, e2e_s, c)
PY
sink_count() { tail -c 96 "$1" 2>/dev/null | tr '\r' '\n' | grep -o 'mesg=[0-9]*' | tail -1 | cut -d= -f2 || true; }

start_sink() { # tag
  smtp-sink -u nobody -c "127.0.0.1:$SINK_PORT" 1000 >"$WORK/count.$1" 2>"$WORK/sink.$1.err" &
  SINK_PID=$!
  wait_port "$SINK_PORT" || { echo "smtp-sink did not listen on $SINK_PORT" >&2; exit 1; }
}
# run_measure TAG PORT: sets SRC_S SRC_RC E2E_S COUNT
run_measure() {
  python3 "$WORK/measure.py" "$WORK/count.$1" "$N" "$WAIT" -- \
    smtp-source -s "$SESSIONS" -m "$N" -l "$SIZE" -d \
    -f bench@example.com -t rcpt@remote.example "127.0.0.1:$2" >"$WORK/measure.$1" &
  MEAS_PID=$!
  wait "$MEAS_PID" || true
  MEAS_PID=
  read -r SRC_S SRC_RC E2E_S COUNT <"$WORK/measure.$1"
}
# finish_sink TAG: waits for QUIET seconds without a new message (bounded),
# stops the sink, sets FINAL (the sink's final count).
finish_sink() {
  local last cur quiet=0 deadline=$((SECONDS + 30 * QUIET + 30))
  last=$(sink_count "$WORK/count.$1")
  while [ "$quiet" -lt $((QUIET * 10)) ] && [ "$SECONDS" -lt "$deadline" ]; do
    sleep 0.1
    cur=$(sink_count "$WORK/count.$1")
    if [ "$cur" = "$last" ]; then quiet=$((quiet + 1)); else last=$cur; quiet=0; fi
  done
  stop_pid "$SINK_PID" 5; SINK_PID=
  FINAL=$(sink_count "$WORK/count.$1"); FINAL=${FINAL:-0}
}
rate() { python3 -c "import math,sys; s=float('$2'); print('nan' if math.isnan(s) else f'{$1 / s:.0f}')"; }

# --- private Postfix instance --------------------------------------------
mkdir -p "$PF" "$WORK/pfqueue" "$WORK/pfdata"
chown postfix "$WORK/pfdata"
cat >"$PF/main.cf" <<EOF
compatibility_level = 3.6
queue_directory = $WORK/pfqueue
data_directory = $WORK/pfdata
meta_directory = /etc/postfix
myhostname = relay-bench.localdomain
mydestination =
relayhost = [127.0.0.1]:$SINK_PORT
mynetworks = 127.0.0.0/8
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
smtpd_recipient_restrictions = permit_mynetworks, reject
smtp_tls_security_level = none
smtpd_tls_security_level = none
alias_maps =
alias_database =
local_recipient_maps =
syslog_name = postfix-relay-bench
maillog_file = $WORK/postfix.log
maillog_file_prefixes = $WORK
EOF
# Debian's master.cf: the same services, chroot off (the private queue
# directory has no chroot files), smtpd on 127.0.0.1:PF_PORT, no pipes.
awk -v addr="127.0.0.1:$PF_PORT" '
  /^#/ || /^[ \t]*$/ { next }
  /^[ \t]/ { if (keep) print; next }
  { keep = ($8 != "pipe"); if (!keep) next
    if ($1 == "smtp" && $2 == "inet") $1 = addr
    $5 = "n"; print }' /etc/postfix/master.cf >"$PF/master.cf"
postfix -c "$PF" check >"$WORK/pfcheck.log" 2>&1 || { cat "$WORK/pfcheck.log" "$WORK/postfix.log" >&2; exit 1; }
timeout 60 postfix -c "$PF" start >"$WORK/pfstart.log" 2>&1 || { cat "$WORK/pfstart.log" "$WORK/postfix.log" >&2; exit 1; }
PF_STARTED=1
wait_port "$PF_PORT" || { echo "Postfix did not listen on $PF_PORT" >&2; cat "$WORK/postfix.log" >&2; exit 1; }
PF_VERSION=$(postconf -c "$PF" -h mail_version)
pf_queued() { find "$WORK/pfqueue/incoming" "$WORK/pfqueue/active" "$WORK/pfqueue/deferred" "$WORK/pfqueue/maildrop" -type f 2>/dev/null | wc -l; }
pf_log_count() { local c; c=$(grep -c "$1" "$WORK/postfix.log" 2>/dev/null || true); echo "${c:-0}"; }

# --- rounds -----------------------------------------------------------------
# Each *_round sets RATE (end-to-end msgs/s), ACC (smtp-source's own
# msgs/s) and appends a check line to $WORK/checks.
check() { # tag extra-text
  local lost=0 extra=0
  [ "$FINAL" -lt "$N" ] && lost=$((N - FINAL))
  [ "$FINAL" -gt "$N" ] && extra=$((FINAL - N))
  [ "$lost" = 0 ] && [ "$extra" = 0 ] && [ "$SRC_RC" = 0 ] || BAD=1
  echo "$1: sink received $FINAL of $N (lost $lost, extra $extra), smtp-source rc $SRC_RC, $SRC_S s to send, $E2E_S s end to end$2" >>"$WORK/checks"
}

direct_round() {
  local tag=direct-$1
  start_sink "$tag"
  run_measure "$tag" "$SINK_PORT"
  finish_sink "$tag"
  RATE=$(rate "$N" "$E2E_S"); ACC=$(rate "$N" "$SRC_S")
  check "$tag" ""
}

postfix_round() {
  local tag=postfix-$1 sent0 sent1 i deferred bounced
  postsuper -c "$PF" -d ALL >/dev/null 2>&1 || true
  sent0=$(pf_log_count 'status=sent'); deferred=$(pf_log_count 'status=deferred'); bounced=$(pf_log_count 'status=bounced')
  start_sink "$tag"
  run_measure "$tag" "$PF_PORT"
  for i in $(seq 600); do [ "$(pf_queued)" = 0 ] && break; sleep 0.1; done
  finish_sink "$tag"
  sleep 0.5 # postlogd writes asynchronously
  sent1=$(pf_log_count 'status=sent')
  deferred=$(( $(pf_log_count 'status=deferred') - deferred )); bounced=$(( $(pf_log_count 'status=bounced') - bounced ))
  RATE=$(rate "$N" "$E2E_S"); ACC=$(rate "$N" "$SRC_S")
  check "$tag" "; Postfix: $((sent1 - sent0)) status=sent, $deferred deferred, $bounced bounced, $(pf_queued) left in queue"
  [ "$deferred" = 0 ] && [ "$bounced" = 0 ] || BAD=1
  postsuper -c "$PF" -d ALL >/dev/null 2>&1 || true
}

metric() { # name -> sum over cores
  curl -s --max-time 2 "http://127.0.0.1:$ADMIN_PORT/metrics" | awk -v n="$1" '$1 ~ "^"n"[{]" {s += $2} END {print s + 0}'
}
tern_round() {
  local cores=$1 tag=tern$1-$2 dir="$WORK/tern-$1-$2" i delivered deferred bounced queued warn cpu cfg=()
  [ -n "$TERN_CONFIG" ] && cfg=(--config "$TERN_CONFIG")
  start_sink "$tag"
  "$TERN" serve "${cfg[@]}" --data-dir "$dir" --listen "127.0.0.1:$TERN_PORT" --relay-to "127.0.0.1:$SINK_PORT" \
    --admin-listen "127.0.0.1:$ADMIN_PORT" --cores "$cores" 2>"$WORK/$tag.log" &
  TERN_PID=$!
  wait_port "$TERN_PORT" || { echo "tern did not listen on $TERN_PORT" >&2; tail "$WORK/$tag.log" >&2; exit 1; }
  wait_port "$ADMIN_PORT" || true
  run_measure "$tag" "$TERN_PORT"
  for i in $(seq 600); do
    [ "$(metric tern_queue_messages)" = 0 ] && [ "$(metric tern_queue_in_flight)" = 0 ] && break
    sleep 0.1
  done
  finish_sink "$tag"
  delivered=$(metric tern_delivered_recipients_total); deferred=$(metric tern_deferred_total)
  bounced=$(metric tern_bounced_recipients_total); queued=$(metric tern_queue_messages)
  cpu=$(awk -v hz="$(getconf CLK_TCK)" '{printf "%.1f", ($14 + $15) / hz}' "/proc/$TERN_PID/stat")
  stop_pid "$TERN_PID" 30; TERN_PID=
  warn=$(grep -cE ' (WARN|ERROR) ' "$WORK/$tag.log" || true)
  RATE=$(rate "$N" "$E2E_S"); ACC=$(rate "$N" "$SRC_S")
  check "$tag" "; tern: $delivered delivered, $deferred deferred, $bounced bounced, $queued queued at stop, $warn WARN/ERROR log lines, ${cpu} s CPU"
  if [ "$warn" != 0 ]; then
    grep -E ' (WARN|ERROR) ' "$WORK/$tag.log" | head -5 | sed 's/^/    /' >>"$WORK/checks"; BAD=1
  fi
  [ "$delivered" = "$N" ] && [ "$deferred" = 0 ] && [ "$bounced" = 0 ] || BAD=1
  rm -rf "$dir"
}

BAD=0
: >"$WORK/checks"
LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
T_START=$(now)
S=(); SA=(); P=(); PA=(); T1=(); T1A=(); T2=(); T2A=()
for round in $(seq "$ROUNDS"); do
  direct_round "$round"; S+=("$RATE"); SA+=("$ACC")
  postfix_round "$round"; P+=("$RATE"); PA+=("$ACC")
  tern_round 1 "$round"; T1+=("$RATE"); T1A+=("$ACC")
  tern_round 2 "$round"; T2+=("$RATE"); T2A+=("$ACC")
  echo "round $round end to end: smtp-sink direct ${S[-1]}/s, postfix ${P[-1]}/s, tern 1 core ${T1[-1]}/s, tern 2 cores ${T2[-1]}/s" >&2
done
ELAPSED=$(python3 -c "print(f'{$(now) - $T_START:.0f}')")

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
median_ratio() {
  local -n xs=$1; local i rs=()
  for i in "${!P[@]}"; do rs+=("$(python3 -c "import math; a, b = float('${xs[$i]}'), float('${P[$i]}'); print('nan' if math.isnan(a) or math.isnan(b) else f'{a / b:.1f}')")"); done
  median "${rs[@]}"
}
echo
echo "smtp-source -s $SESSIONS -m $N -l $SIZE -d, $ROUNDS rounds, $(nproc) cores, $(uname -r), $(date -u +%Y-%m-%dT%H:%MZ), ${ELAPSED} s; loadavg before $LOAD0, after $(cut -d' ' -f1-3 /proc/loadavg)"
echo "tern: commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- engine smtp storage Cargo.lock 2>/dev/null || echo ' + uncommitted changes in the work tree'), ${TERN_CONFIG:-default config}"
echo
echo "| path | end-to-end msgs/s (median) | all rounds | vs Postfix (median of per-round ratios) | smtp-source's own msgs/s (median) |"
echo "|---|---:|---|---:|---:|"
echo "| smtp-source -> smtp-sink (no relay; the client's ceiling) | $(median "${S[@]}") | ${S[*]} | $(median_ratio S)x | $(median "${SA[@]}") |"
echo "| smtp-source -> Postfix $PF_VERSION -> smtp-sink | $(median "${P[@]}") | ${P[*]} | 1.0x | $(median "${PA[@]}") |"
echo "| smtp-source -> tern, 1 core -> smtp-sink | $(median "${T1[@]}") | ${T1[*]} | $(median_ratio T1)x | $(median "${T1A[@]}") |"
echo "| smtp-source -> tern, 2 cores -> smtp-sink | $(median "${T2[@]}") | ${T2[*]} | $(median_ratio T2)x | $(median "${T2A[@]}") |"
echo
echo "Checks (each row must receive exactly $N):"
sed 's/^/  /' "$WORK/checks"
if [ "$BAD" = 0 ]; then echo "all rows: $N received, no loss, no extra deliveries, no errors"; else echo "PROBLEMS above" >&2; exit 1; fi
