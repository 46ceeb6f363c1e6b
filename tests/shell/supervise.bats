#!/usr/bin/env bats
# bin/vhostsplice-supervise: its restart policy with a scripted stand-in worker (no root needed), then
# with the real `vhostsplice run` provoked by `vhostsplice drive` (root, private netns).

load helpers

setup() {
    W=$BATS_TEST_TMPDIR
    PIDS=()
    # fake_worker: exits with the next code from $W/codes (one per run) and logs each run
    cat >"$W/fake-worker" <<'EOF'
#!/usr/bin/env bash
dir=$(dirname "$0")
read -r first rest <"$dir/codes"
echo "$rest" >"$dir/codes"
echo "$first" >>"$dir/runs"
case $first in
    # like `vhostsplice run`: started with the stop signals blocked, it unblocks them once its handler is in
    sleep) exec "${PYTHON:-python3}" -c '
import signal, sys, time
def stop(*_):
    open(sys.argv[1], "a").write("stopped\n")
    sys.exit(0)
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, stop)
signal.pthread_sigmask(signal.SIG_UNBLOCK, (signal.SIGTERM, signal.SIGINT))
time.sleep(60)
sys.exit(9)' "$dir/runs" ;;
    kill) kill -KILL $$ ;;
    *) exit "$first" ;;
esac
EOF
    chmod +x "$W/fake-worker"
}

teardown() {
    vs_teardown
}

# supervise_fake CODES... [-- supervisor options]: run the supervisor over the fake worker to the end.
supervise_fake() {
    local codes=()
    while (($#)) && [[ $1 != -- ]]; do codes+=("$1"); shift; done
    [[ ${1:-} == -- ]] && shift
    echo "${codes[*]}" >"$W/codes"
    : >"$W/runs"
    code=0
    "$SUPERVISE" --backoff 0.01 --jitter 0 "$@" -- "$W/fake-worker" 2>"$W/log" || code=$?
    cat "$W/log" >&2
}

runs() { wc -l <"$W/runs"; }

@test "supervise: restarts on 104 ECONNRESET, 5 EIO, 74 EBADMSG, 14 EFAULT, 71 EPROTO, 32 EPIPE; gives up on 22 EINVAL" {
    supervise_fake 104 5 74 14 71 32 22
    [ "$code" -eq 22 ]
    [ "$(runs)" -eq 7 ]
    grep -q "exited 104 ECONNRESET .*: restart 1 in" "$W/log"
    grep -q "exited 74 EBADMSG .*: restart 3 in" "$W/log"
    grep -q "exited 22 EINVAL .*: giving up" "$W/log"
}

@test "supervise: gives up at once on 22 EINVAL, 95 ENOTSUP, 98 EADDRINUSE, 77 EBADFD, 1 EPERM, 13 EACCES, 2 ENOENT" {
    local c
    for c in 22 95 98 77 1 13 2; do
        supervise_fake "$c" 0
        [ "$code" -eq "$c" ]
        [ "$(runs)" -eq 1 ]
        grep -q "giving up" "$W/log"
    done
}

@test "supervise: exit 0 (the front-end left cleanly) restarts at once and resets the count" {
    supervise_fake 74 74 0 74 74 22 -- --max-restarts 2
    [ "$code" -eq 22 ]
    [ "$(runs)" -eq 6 ]
    grep -q "exited 0 OK .*left cleanly: restart now" "$W/log"
}

@test "supervise --clean-exit stop: exit 0 ends the supervisor with 0" {
    supervise_fake 104 0 74 -- --clean-exit stop
    [ "$code" -eq 0 ]
    [ "$(runs)" -eq 2 ]
}

@test "supervise: back-off doubles up to --backoff-max; --max-restarts failures in a row give up" {
    supervise_fake 74 74 74 74 74 74 -- --backoff 0.02 --backoff-max 0.08 --max-restarts 4
    [ "$code" -eq 74 ]
    [ "$(runs)" -eq 5 ]
    [ "$(grep -o 'restart [0-9] in [0-9.]* s' "$W/log" | awk '{print $4}' | tr '\n' ' ')" = "0.02 0.04 0.08 0.08 " ]
    grep -q "4 restarts in a row without a stable run: giving up" "$W/log"
}

@test "supervise: --jitter shortens each doubled delay by at most that part of it" {
    supervise_fake 74 74 74 22 -- --backoff 0.1 --jitter 0.5
    [ "$code" -eq 22 ]
    grep -o 'restart [0-9] in [0-9.]* s' "$W/log" | awk '{print $2, $4}' >"$W/delays"
    [ "$(wc -l <"$W/delays")" -eq 3 ]
    awk '{ d = 0.1 * 2 ^ ($1 - 1); if ($2 > d + 1e-9 || $2 < d / 2 - 0.001) exit 1 }' "$W/delays"
}

@test "supervise: a worker killed by a signal (exit 137) is restarted" {
    supervise_fake kill 22
    [ "$code" -eq 22 ]
    [ "$(runs)" -eq 2 ]
    grep -q "exited 137 killed by signal 9 .*: restart 1" "$W/log"
}

@test "supervise: SIGTERM and SIGINT stop the worker and end the supervisor with its exit code 0" {
    local sig
    for sig in TERM INT; do
        echo "sleep" >"$W/codes"
        : >"$W/runs"
        "$SUPERVISE" -- "$W/fake-worker" 2>"$W/log" 3>&- &
        local spid=$!
        PIDS+=("$spid")
        wait_file_content "$W/runs" sleep
        kill "-$sig" "$spid"
        wait_exit "$spid" 10
        cat "$W/log" >&2
        [ "$code" -eq 0 ]
        grep -q stopped "$W/runs"
        grep -q "SIG$sig: stopping worker" "$W/log"
    done
}

@test "supervise: usage errors exit 22 EINVAL" {
    code=0
    "$SUPERVISE" 2>/dev/null || code=$?
    [ "$code" -eq 22 ]
    code=0
    "$SUPERVISE" --backoff soon -- true 2>/dev/null || code=$?
    [ "$code" -eq 22 ]
    "$SUPERVISE" --help | grep -q -- --max-restarts
}

wait_file_content() {
    local i
    for ((i = 0; i < 200; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        sleep 0.05
    done
    return 1
}

# -- with the real worker --------------------------------------------------------------------------------

# supervise_real [run options...]: the supervisor over `vhostsplice run` in the namespace; sets SPID.
supervise_real() {
    # shellcheck disable=SC2086
    "$SUPERVISE" --backoff 0.1 --jitter 0 -- ip netns exec "$NS" $VS run --socket-path "$SOCK" --tap "$TAP" \
        --stats-file "$STATS" "$@" </dev/null 2>"$W/log" 3>&- &
    SPID=$!
    PIDS+=("$SPID")
}

@test "supervise + worker: 104 ECONNRESET (drive --fault vanish) restarts; the next front-end is served; SIGTERM ends it with 0" {
    vs_setup
    supervise_real
    wait_listening_any
    drive --send 2 --fault vanish --fault-after 2
    [ "$dcode" -eq 0 ]
    drive --send 3 --connect-timeout 15          # retries until the restarted worker listens
    [ "$dcode" -eq 0 ]
    wait_file_content "$W/log" "exited 0 OK"
    stat_is rings.tx.packets 3
    grep -q "exited 104 ECONNRESET .*: restart 1 in 0.1 s" "$W/log"
    wait_listening_any
    kill -TERM "$SPID"
    wait_exit "$SPID" 15
    cat "$W/log" >&2
    [ "$code" -eq 0 ]
    grep -q "after a stop signal: done" "$W/log"
}

@test "supervise + worker: every worker gets the same state page on tmpfs; SIGKILL restarts; the file goes with the supervisor" {
    vs_setup
    supervise_real
    wait_listening_any
    page=$(sed -n 's/.*ring positions kept in \([^ ]*\) for every worker.*/\1/p' "$W/log")
    [ -n "$page" ] && [ -f "$page" ]
    first=$(sed -n 's/.*started worker \([0-9]*\):.*/\1/p' "$W/log" | head -1)
    kill -KILL "$first"
    wait_file_content "$W/log" "exited 137 killed by signal 9 .*: restart 1 in 0.1 s"
    drive --send 3 --connect-timeout 15
    [ "$dcode" -eq 0 ]
    wait_file_content "$W/log" "exited 0 OK"
    stat_is resume.page on
    stat_is resume.generation 2          # the second worker took the page the first one left
    stat_is rings.tx.packets 3
    kill -TERM "$SPID"
    wait_exit "$SPID" 15
    [ "$code" -eq 0 ]
    [ ! -e "$page" ]
}

@test "supervise --no-state: the workers get no state page" {
    vs_setup
    "$SUPERVISE" --no-state --backoff 0.1 --jitter 0 -- ip netns exec "$NS" $VS run --socket-path "$SOCK" \
        --tap "$TAP" --stats-file "$STATS" </dev/null 2>"$W/log" 3>&- &
    SPID=$!
    PIDS+=("$SPID")
    wait_listening_any
    drive --send 1
    [ "$dcode" -eq 0 ]
    wait_file_content "$W/log" "exited 0 OK"
    stat_is resume.page off
    ! grep -q "ring positions kept" "$W/log"
    kill -TERM "$SPID"
    wait_exit "$SPID" 15
}

@test "supervise + worker: 74 EBADMSG (drive --fault avail-idx-jump) restarts with back-off" {
    vs_setup
    supervise_real
    wait_listening_any
    drive --send 1 --fault avail-idx-jump
    [ "$dcode" -eq 0 ]
    wait_file_content "$W/log" "exited 74 EBADMSG .*: restart 1 in 0.1 s"
    drive --send 1 --fault avail-idx-jump --connect-timeout 15
    [ "$dcode" -eq 0 ]
    wait_file_content "$W/log" "exited 74 EBADMSG .*: restart 2 in 0.2 s"
    kill -TERM "$SPID"
    wait_exit "$SPID" 15
    [ "$code" -eq 0 ]
}

@test "supervise + worker: 22 EINVAL (--cpu 4095) gives up at once" {
    vs_setup
    supervise_real --cpu 4095
    wait_exit "$SPID" 20
    cat "$W/log" >&2
    [ "$code" -eq 22 ]
    [ "$(grep -c 'started worker' "$W/log")" -eq 1 ]
}

@test "supervise + worker: 95 ENOTSUP (drive --fault no-version-1) gives up" {
    vs_setup
    supervise_real
    wait_listening_any
    drive --fault no-version-1
    [ "$dcode" -eq 0 ]
    wait_exit "$SPID" 15
    cat "$W/log" >&2
    [ "$code" -eq 95 ]
}

# wait_listening_any: until the socket exists (the supervisor's current worker listens).
wait_listening_any() {
    local i
    for ((i = 0; i < 400; i++)); do
        [[ -S $SOCK ]] && return 0
        sleep 0.05
    done
    return 1
}
