# Shared by tests/shell/*.bats: each test gets a private network namespace `vsb-$$-N` that it creates
# and always deletes, and starts `vhostsplice run` in it as a user script would. Only PIDs a test
# started itself are ever signalled or killed.
#
# Environment:
#   VHOSTSPLICE             the command to run (default: vhostsplice on PATH; tests/run.sh sets the
#                           console script pip installed); may be several words ("python3 -P -m vhostsplice")
#   VHOSTSPLICE_SUPERVISE   the supervisor script (default: bin/vhostsplice-supervise of this checkout)
#   PYTHON                  reads JSON for the checks (default: python3)

VS=${VHOSTSPLICE:-vhostsplice}
# shellcheck disable=SC2034  # used by the .bats files that load this file
SUPERVISE=${VHOSTSPLICE_SUPERVISE:-$(cd "$BATS_TEST_DIRNAME/../.." && pwd)/bin/vhostsplice-supervise}
PY=${PYTHON:-python3}
TAP=vsb0

vs_setup() {
    [[ $(id -u) -eq 0 ]] || skip "needs root (ip netns, /dev/net/tun)"
    NS="vsb-$$-${BATS_TEST_NUMBER}"
    W=$BATS_TEST_TMPDIR
    SOCK=$W/w.sock
    STATS=$W/w.stats.json
    PIDS=()
    ip netns add "$NS"
    ip -n "$NS" link set lo up
    # no IPv6 autoconfiguration chatter on the tap: what drive receives is what a test sent
    # shellcheck disable=SC2016  # $k is the inner sh's
    ip netns exec "$NS" sh -c 'for k in all default; do echo 1 >/proc/sys/net/ipv6/conf/$k/disable_ipv6; done' \
        2>/dev/null || true
}

vs_teardown() {
    local pid i
    for pid in "${PIDS[@]}"; do       # TERM first: a supervisor stops its own worker on TERM
        kill -0 "$pid" 2>/dev/null && kill -TERM "$pid" 2>/dev/null
    done
    for pid in "${PIDS[@]}"; do
        for ((i = 0; i < 100; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.05
        done
        kill -0 "$pid" 2>/dev/null && kill -KILL "$pid" 2>/dev/null
        wait "$pid" 2>/dev/null || true
    done
    if [[ -n ${NS:-} ]]; then
        ip netns delete "$NS" 2>/dev/null || true
    fi
}

# start_worker [run options...]: `vhostsplice run` in the namespace, in the background; sets WPID.
# `ip netns exec` execs the command, so WPID is the worker itself.
start_worker() {
    # shellcheck disable=SC2086
    ip netns exec "$NS" $VS run --socket-path "$SOCK" --tap "$TAP" --stats-file "$STATS" "$@" \
        </dev/null >"$W/worker.out" 2>"$W/worker.err" 3>&- &
    WPID=$!
    PIDS+=("$WPID")
}

# wait_listening: until the worker's socket exists (fails if the worker died first).
wait_listening() {
    local i
    for ((i = 0; i < 400; i++)); do
        [[ -S $SOCK ]] && return 0
        if ! kill -0 "$WPID" 2>/dev/null; then
            echo "worker exited before listening:" >&2
            cat "$W/worker.err" >&2
            return 1
        fi
        sleep 0.05
    done
    echo "worker did not listen on $SOCK" >&2
    return 1
}

# wait_exit PID [SECONDS]: wait for our own child PID to end; its exit code in $code.
wait_exit() {
    local pid=$1 limit=${2:-15} i
    for ((i = 0; i < limit * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        echo "pid $pid still running after ${limit} s" >&2
        return 1
    fi
    code=0
    wait "$pid" || code=$?
}

# live_stats_have KEY: the worker ($WPID), asked now (SIGUSR1 rewrites --stats-file, a new inode), counts KEY.
live_stats_have() {
    local before i
    before=$(stat -c %i "$STATS" 2>/dev/null || echo none)
    kill -USR1 "$WPID" 2>/dev/null || return 1
    for ((i = 0; i < 100; i++)); do
        [[ $(stat -c %i "$STATS" 2>/dev/null || echo none) != "$before" ]] && break
        sleep 0.05
    done
    "$PY" -c 'import json, sys; sys.exit(sys.argv[2] not in json.load(open(sys.argv[1])))' "$STATS" "$1"
}

# wait_settled [SECONDS]: until the worker ($WPID) has dealt with every connection made to it so far: none
# waits at its socket to be accepted (ss: the listener's Recv-Q) and none is attached (its live statistics
# name no front-end's messages). Fails if the worker exits first.
wait_settled() {
    local i queued
    for ((i = 0; i < ${1:-10} * 20; i++)); do
        if ! kill -0 "$WPID" 2>/dev/null; then
            echo "worker $WPID exited" >&2
            return 1
        fi
        queued=$(ip netns exec "$NS" ss -xlnH src "$SOCK" | awk '$2 == "LISTEN" { print $3 }')
        if [[ $queued == 0 ]] && ! live_stats_have messages; then
            return 0
        fi
        sleep 0.05
    done
    echo "worker $WPID still has a connection to deal with" >&2
    return 1
}

# worker_exit [SECONDS]: wait for the worker; its exit code in $code (and shown on failure).
worker_exit() {
    wait_exit "$WPID" "${1:-15}"
    echo "worker exit $code; stderr:" >&2
    cat "$W/worker.err" >&2 || true
}

# drive [drive options...]: `vhostsplice drive` on the worker's socket (outside the namespace: it only
# needs the socket); summary in $W/drive.json, exit code in $dcode.
drive() {
    dcode=0
    # shellcheck disable=SC2086
    $VS drive --socket-path "$SOCK" "$@" >"$W/drive.json" 2>"$W/drive.err" 3>&- || dcode=$?
    echo "drive exit $dcode: $(cat "$W/drive.err")" >&2
}

# jget FILE KEY.PATH: one value of a JSON file (strings bare, null as null).
jget() {
    "$PY" - "$1" "$2" <<'EOF'
import json, sys
value = json.load(open(sys.argv[1]))
for key in sys.argv[2].split("."):
    value = value[int(key)] if isinstance(value, list) else value[key]
print("null" if value is None else value if isinstance(value, str) else json.dumps(value))
EOF
}

# stat_is KEY.PATH VALUE: the worker's exit statistics say so.
stat_is() {
    local got
    got=$(jget "$STATS" "$1")
    if [[ $got != "$2" ]]; then
        echo "worker stats $1 = $got, expected $2" >&2
        return 1
    fi
}

# fault_row NAME FIELD: one field of drive's fault table (the single source) for fault NAME.
fault_row() {
    # shellcheck disable=SC2086
    $VS drive --list-faults --json >"$W/faults.json"
    "$PY" - "$W/faults.json" "$1" "$2" <<'EOF'
import json, sys
rows = {r["name"]: r for r in json.load(open(sys.argv[1]))}
value = rows[sys.argv[2]][sys.argv[3]]
print("null" if value is None else value)
EOF
}

# wait_file FILE [SECONDS]: until FILE exists.
wait_file() {
    local i
    for ((i = 0; i < ${2:-10} * 20; i++)); do
        [[ -e $1 ]] && return 0
        sleep 0.05
    done
    echo "$1 did not appear" >&2
    return 1
}

# start_worker_on_pair seqpacket|stream [run options...]: `vhostsplice run --host-fd 3` whose host fd is
# one end of a socketpair, as a script that hands a worker its own link would. The other end belongs to
# a peer process that waits for $W/peer.go, then does what $W/peer.go says: "close" (the peer leaves)
# or "garbage" (4 bytes that are no frame length under --framing qemu), then waits for the worker to
# let go (60 s at most) and exits by itself. Sets WPID (the worker: the Python parent execs it).
start_worker_on_pair() {
    local kind=$1
    shift
    # shellcheck disable=SC2086
    ip netns exec "$NS" "$PY" - "$kind" "$W/peer.go" $VS run --socket-path "$SOCK" --host-fd 3 \
        --stats-file "$STATS" "$@" </dev/null >"$W/worker.out" 2>"$W/worker.err" 3>&- <<'PYEOF' &
import os, socket, sys, time
kind, go, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET if kind == "seqpacket" else socket.SOCK_STREAM)
if os.fork() == 0:                      # the peer
    a.close()
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.05)
    if os.path.exists(go) and open(go).read().strip() == "garbage":
        b.send(b"\xff\xff\xff\xff" + bytes(60))
        b.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            while b.recv(65536):
                pass
        except OSError:
            pass
    os._exit(0)
b.close()
if a.fileno() != 3:
    os.dup2(a.fileno(), 3)
os.set_inheritable(3, True)             # (dup2 onto itself would keep O_CLOEXEC)
os.execvp(argv[0], argv)
PYEOF
    WPID=$!
    PIDS+=("$WPID")
}

# drive_holding: a `drive` front-end in the background that brings both rings up with 8 RX buffers posted
# and holds them (30 s at most) so the worker is serving; returns once it is ready. Sets DPID.
drive_holding() {
    $VS drive --socket-path "$SOCK" --rx-buffers 8 --hold 30 --ready-file "$W/ready" \
        >"$W/drive.json" 2>"$W/drive.err" 3>&- &
    DPID=$!
    PIDS+=("$DPID")
    wait_file "$W/ready"
}
