#!/usr/bin/env bats
# The worker's exit-code table (README "Exit codes"), row by row, as a user script sees it: start
# `vhostsplice run` in a private netns, provoke the row (with `vhostsplice drive` where a front-end is
# needed), `wait` for the exit code. The rows a fault provokes (74, 14, 104, 95, 71) are in faults.bats.

load helpers

setup() { vs_setup; }
teardown() { vs_teardown; }

@test "exit 0 OK: the front-end stops both rings and closes (drive --send 100)" {
    start_worker
    wait_listening
    drive --send 100 --size 1514
    [ "$dcode" -eq 0 ]
    [ "$(jget "$W/drive.json" tx.used)" -eq 100 ]
    worker_exit
    [ "$code" -eq 0 ]
    stat_is errno OK
    stat_is reason "front-end closed the connection"
    stat_is rings.tx.packets 100
    stat_is rings.tx.bytes 151400
}

stop_by_signal() {
    start_worker
    wait_listening
    $VS drive --socket-path "$SOCK" --send 5 --rx-buffers 16 --hold 30 --ready-file "$W/ready" \
        >"$W/drive.json" 2>"$W/drive.err" 3>&- &
    local dpid=$!
    PIDS+=("$dpid")
    wait_file "$W/ready"
    kill "-$1" "$WPID"
    worker_exit
    [ "$code" -eq 0 ]
    stat_is reason "stopped by signal"
    stat_is rings.tx.packets 5
    wait_exit "$dpid"               # the front-end saw the worker leave during --hold: not its failure
    [ "$code" -eq 0 ]
    [ "$(jget "$W/drive.json" worker_closed)" = true ]
}

@test "exit 0 OK: SIGTERM stops a worker serving a front-end" {
    stop_by_signal TERM
}

@test "exit 0 OK: SIGINT stops a worker serving a front-end" {
    stop_by_signal INT
}

@test "exit 22 EINVAL: an unknown CPU (--cpu 4095)" {
    start_worker --cpu 4095
    worker_exit
    [ "$code" -eq 22 ]
    grep -q "CPU 4095 is not in this process's allowed set" "$W/worker.err"
}

@test "exit 22 EINVAL: bad usage (an unknown option is EINVAL, never click's 2)" {
    start_worker --no-such-option
    worker_exit
    [ "$code" -eq 22 ]
}

@test "exit 98 EADDRINUSE (kernel errno): a second worker on a served socket" {
    start_worker
    wait_listening
    local first=$WPID
    start_worker
    worker_exit
    [ "$code" -eq 98 ]
    grep -q "already served" "$W/worker.err"
}

@test "exit 98 EADDRINUSE leaves the first, idle worker serving" {
    start_worker
    wait_listening
    local first=$WPID
    start_worker
    worker_exit
    [ "$code" -eq 98 ]
    # The second worker's probe connects and closes: the idle first worker must keep listening.
    WPID=$first
    wait_settled
    drive --send 3                  # still serving: a front-end is served
    [ "$dcode" -eq 0 ]
    worker_exit
    [ "$code" -eq 0 ]
}

@test "exit 2 ENOENT (kernel errno): --connect to a front-end socket that does not exist" {
    # shellcheck disable=SC2086
    ip netns exec "$NS" $VS run --connect "$W/nobody.sock" --tap "$TAP" 2>"$W/worker.err" 3>&- &
    WPID=$!
    PIDS+=("$WPID")
    worker_exit
    [ "$code" -eq 2 ]
}

@test "exit 1 EPERM (kernel errno): a worker without CAP_NET_ADMIN cannot create its tap" {
    command -v setpriv >/dev/null || skip "setpriv (util-linux) not installed"
    # shellcheck disable=SC2086
    ip netns exec "$NS" setpriv --bounding-set -net_admin $VS run --socket-path "$SOCK" --tap "$TAP" \
        2>"$W/worker.err" 3>&- &
    WPID=$!
    PIDS+=("$WPID")
    worker_exit
    [ "$code" -eq 1 ]                # EPERM is 1, the same number as "internal error"
    grep -q "EPERM" "$W/worker.err"
    ! grep -q Traceback "$W/worker.err"
}

@test "exit 77 EBADFD: the tap is deleted under a serving worker" {
    start_worker
    wait_listening
    drive_holding
    ip -n "$NS" link del "$TAP"
    worker_exit 10
    [ "$code" -eq 77 ]
    stat_is errno EBADFD
    wait_exit "$DPID"
}

@test "exit 77 EBADFD: the tap is deleted under a worker whose RX ring has no buffers posted" {
    start_worker
    wait_listening
    $VS drive --socket-path "$SOCK" --send 1 --hold 2 --ready-file "$W/ready" \
        >"$W/drive.json" 2>"$W/drive.err" 3>&- &
    local dpid=$!
    PIDS+=("$dpid")
    wait_file "$W/ready"
    ip -n "$NS" link del "$TAP"
    wait_exit "$dpid"
    worker_exit 10
    # The tap stays watched for EPOLLERR (with EPOLLPRI, which wakes on the deletion) while RX is starved.
    [ "$code" -eq 77 ]
}

# A tap never reads 0 and a downed tap's EIO is a counted drop: these two rows need a socket host fd.
@test "exit 32 EPIPE: the peer of a --host-fd socketpair (SEQPACKET) leaves while rings run" {
    start_worker_on_pair seqpacket
    wait_listening
    drive_holding
    echo close >"$W/peer.go"
    worker_exit 10
    [ "$code" -eq 32 ]
    stat_is errno EPIPE
    wait_exit "$DPID"
}

@test "exit 5 EIO: a --framing qemu stream peer sends a length no frame has (out of step)" {
    start_worker_on_pair stream --framing qemu
    wait_listening
    drive_holding
    echo garbage >"$W/peer.go"
    worker_exit 10
    [ "$code" -eq 5 ]
    stat_is errno EIO
    wait_exit "$DPID"
}
