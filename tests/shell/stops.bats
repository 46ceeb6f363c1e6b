#!/usr/bin/env bats
# Stops are clean from the first instant, and a tap outlives its workers (issue 20): a lone `run` stopped
# during set-up, a supervised worker stopped during its start-up, the tap across supervised restarts.
# Root, each test in its own namespace (helpers.bash); only PIDs the test started are signalled.

load helpers

setup() {
    vs_setup
}

teardown() {
    vs_teardown
}

# supervise_worker: bin/vhostsplice-supervise over `vhostsplice run --tap $TAP` in the namespace, until
# its worker listens; sets SPID (its log in $W/log).
supervise_worker() {
    # shellcheck disable=SC2086
    "$SUPERVISE" --backoff 0.05 -- ip netns exec "$NS" $VS run --socket-path "$SOCK" --tap "$TAP" \
        --stats-file "$STATS" </dev/null 2>"$W/log" 3>&- &
    SPID=$!
    PIDS+=("$SPID")
    wait_file "$SOCK" 20
}

# stop_blocked PID: SIGTERM is blocked in PID (the worker's code runs and holds stop signals pending).
# Builtins only (no fork): the test polls it in a tight loop to catch the window before listening.
stop_blocked() {
    local key value
    while read -r key value; do
        [[ $key == SigBlk: ]] && { (( (16#$value >> 14) & 1 )); return; }
    done <"/proc/$1/status" 2>/dev/null
    return 1
}

@test "stops: a lone run that gets SIGTERM during set-up, before it listens, exits 0 (stopped by signal)" {
    local attempt before=0 i
    for ((attempt = 0; attempt < 20 && before == 0; attempt++)); do
        rm -f "$STATS" "$SOCK"
        start_worker
        for ((i = 0; i < 200000; i++)); do      # a busy poll (builtins): at most a few seconds
            stop_blocked "$WPID" && break
            [[ -S $SOCK ]] && break
        done
        [[ -S $SOCK ]] || before=1          # the signal lands before the worker listens
        kill -TERM "$WPID"
        worker_exit
        [ "$code" -eq 0 ]
        [ "$(jget "$STATS" reason)" = "stopped by signal" ]
    done
    [ "$before" -eq 1 ]                     # at least one attempt stopped it before it listened
}

@test "stops: SIGTERM to supervise just after it relaunched a worker ends both with 0 (the worker stops cleanly)" {
    supervise_worker
    drive --send 1 --fault vanish --fault-after 1            # the worker exits 104: relaunched
    wait_file_content "$W/log" "exited 104 ECONNRESET"
    rm -f "$STATS"
    wait_file_content "$W/log" "started worker .*" 2
    kill -TERM "$SPID"                                        # during the new worker's start-up
    wait_exit "$SPID" 20
    cat "$W/log" >&2
    [ "$code" -eq 0 ]
    [ "$(grep -c 'started worker' "$W/log")" -eq 2 ]
    stat_is exit 0                                            # it did not die of the signal
    stat_is reason "stopped by signal"
}

@test "stops: the tap a supervised worker created keeps its index, address and MTU across restarts, and goes with supervise" {
    supervise_worker
    wait_file_content "$W/log" "holding tap $TAP (index"       # the holder's own word: it holds a queue
    local index
    index=$(ip netns exec "$NS" cat "/sys/class/net/$TAP/ifindex")
    ip -n "$NS" addr add 10.77.0.1/24 dev "$TAP"
    ip -n "$NS" link set "$TAP" mtu 1400
    local round worker
    for round in 1 2 3; do
        worker=$(grep -o 'started worker [0-9]*' "$W/log" | tail -1 | awk '{print $3}')
        kill -KILL "$worker"                                  # our supervisor's worker, by its PID
        wait_file_content "$W/log" "started worker .*" $((round + 1))
        [ "$(ip netns exec "$NS" cat "/sys/class/net/$TAP/ifindex")" = "$index" ]
        ip -n "$NS" -o addr show dev "$TAP" | grep -q "inet 10.77.0.1/24"
        [ "$(ip netns exec "$NS" cat "/sys/class/net/$TAP/mtu")" = 1400 ]
    done
    wait_file "$SOCK" 20
    drive --send 2 --connect-timeout 15                        # the last replacement serves
    [ "$dcode" -eq 0 ]
    kill -TERM "$SPID"
    wait_exit "$SPID" 20
    [ "$code" -eq 0 ]
    ! ip -n "$NS" link show "$TAP" 2>/dev/null                 # not persistent: gone with its holder
}

# wait_file_content FILE REGEX [N]: until FILE has at least N (default 1) lines matching REGEX.
wait_file_content() {
    local i
    for ((i = 0; i < 400; i++)); do
        (( $(grep -c "$2" "$1" 2>/dev/null || true) >= ${3:-1} )) && return 0
        sleep 0.05
    done
    echo "$1 has fewer than ${3:-1} lines matching $2" >&2
    return 1
}
