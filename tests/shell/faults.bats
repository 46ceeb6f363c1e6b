#!/usr/bin/env bats
# Every fault of `vhostsplice drive --list-faults` against a real worker: the exit code (or counter) the
# table promises is what the worker gives, and the table says the same as the test's name.

load helpers

setup() { vs_setup; }
teardown() { vs_teardown; }

# check_fault FAULT EXIT STAT VALUE [run options...]: start a worker, send 2 frames, inject FAULT (then
# 2 more frames if the worker is still there); drive must see the reaction, the worker must exit EXIT
# with STAT == VALUE in its statistics, and the fault table must agree.
check_fault() {
    local fault=$1 want=$2 stat=$3 value=$4 column=exit after=2
    shift 4
    [[ " $* " == *" exit "* ]] && column=exit_on_guest_error_exit
    [[ $(fault_row "$fault" phase) == setup ]] && after=0
    local table
    table=$(fault_row "$fault" "$column")
    [[ $table == null ]] && table=0     # counted: the worker serves on, and exits 0 when drive stops it
    if [[ $table != "$want" ]]; then
        echo "the fault table says $fault -> $table, this test says $want" >&2
        return 1
    fi
    start_worker "$@"
    wait_listening
    drive --send 4 --fault "$fault" --fault-after "$after"
    [ "$dcode" -eq 0 ]
    [ "$(jget "$W/drive.json" fault.observed)" = true ]
    worker_exit
    [ "$code" -eq "$want" ]
    stat_is "$stat" "$value"
}

@test "exit 74 EBADMSG: descriptor loop (--fault descriptor-loop)" {
    check_fault descriptor-loop 74 rings.tx.broken loop
    [ "$(jget "$W/drive.json" err_signalled.tx)" = true ]     # the ring's VRING_ERR eventfd fired
}

@test "exit 74 EBADMSG: descriptor loop on a 2048-entry ring" {
    start_worker
    wait_listening
    drive --queue-size 2048 --send 2 --fault descriptor-loop --fault-after 1 --timeout 1
    worker_exit
    # A loop is found by counting descriptors against the ring size, not by running out of iovecs: with
    # 2048 entries the walk passes VS_MAX_IOV (1024) first, and must still break the ring, not count a drop.
    [ "$dcode" -eq 0 ]
    [ "$code" -eq 74 ]
    stat_is rings.tx.broken loop
}

@test "exit 74 EBADMSG: next index out of range (--fault next-out-of-range)" {
    check_fault next-out-of-range 74 rings.tx.broken next
}

@test "exit 74 EBADMSG: avail index jump (--fault avail-idx-jump)" {
    check_fault avail-idx-jump 74 rings.tx.broken avail_idx
    [ "$(jget "$W/drive.json" err_signalled.tx)" = true ]
}

@test "exit 74 EBADMSG: head out of range (--fault head-out-of-range)" {
    check_fault head-out-of-range 74 rings.tx.broken head
}

@test "exit 74 EBADMSG: chain longer than the ring (--fault chain-longer-than-ring)" {
    check_fault chain-longer-than-ring 74 rings.tx.broken chain_len
}

@test "exit 74 EBADMSG: nested indirect table (--fault nested-indirect)" {
    check_fault nested-indirect 74 rings.tx.broken nested_indirect
}

@test "counted drops_fault, exit 0: address outside memory, the worker serves on (--fault address-outside-memory)" {
    check_fault address-outside-memory 0 rings.tx.drops_fault 1
    stat_is rings.tx.packets 4                        # the frames after the bad chain went out too
}

@test "exit 14 EFAULT: address outside memory with --on-guest-error=exit (--fault address-outside-memory)" {
    check_fault address-outside-memory 14 rings.tx.drops_fault 1 --on-guest-error exit
    stat_is rings.tx.packets 2
}

@test "counted drops_bad_desc, exit 0: device-writable TX descriptor (--fault wrong-direction)" {
    check_fault wrong-direction 0 rings.tx.drops_bad_desc 1
    stat_is rings.tx.packets 4
}

@test "exit 14 EFAULT: device-writable TX descriptor with --on-guest-error=exit (--fault wrong-direction)" {
    check_fault wrong-direction 14 rings.tx.drops_bad_desc 1 --on-guest-error exit
}

@test "counted drops_short, exit 0: TX chain shorter than the header (--fault short-chain)" {
    check_fault short-chain 0 rings.tx.drops_short 1
    stat_is rings.tx.packets 4
}

@test "exit 14 EFAULT: TX chain shorter than the header with --on-guest-error=exit (--fault short-chain)" {
    check_fault short-chain 14 rings.tx.drops_short 1 --on-guest-error exit
}

@test "exit 104 ECONNRESET: the front-end vanishes while rings run (--fault vanish)" {
    check_fault vanish 104 errno ECONNRESET
    stat_is rings.tx.packets 2
}

@test "exit 95 ENOTSUP: the driver refuses VERSION_1 (--fault no-version-1)" {
    check_fault no-version-1 95 errno ENOTSUP
}

@test "exit 71 EPROTO: malformed message, bad payload size (--fault malformed-message)" {
    check_fault malformed-message 71 errno EPROTO
    grep -q "payload is 4 bytes, expected 8" "$W/worker.err" || stat_is reason "SET_VRING_NUM: payload is 4 bytes, expected 8"
}

@test "exit 71 EPROTO: unknown request (--fault unknown-request)" {
    check_fault unknown-request 71 errno EPROTO
}

@test "exit 71 EPROTO: wrong fd count (--fault wrong-fd-count)" {
    check_fault wrong-fd-count 71 errno EPROTO
}

@test "exit 71 EPROTO: bad ring index (--fault bad-ring-index)" {
    check_fault bad-ring-index 71 errno EPROTO
}

@test "every fault drive --list-faults knows is proved by a test in this file" {
    $VS drive --list-faults --json >"$W/faults.json"
    local name missing=0
    for name in $("$PY" -c 'import json, sys; print(" ".join(r["name"] for r in json.load(open(sys.argv[1]))))' "$W/faults.json"); do
        if ! grep -q "^@test .*(--fault $name)\"" "$BATS_TEST_FILENAME"; then
            echo "no test for fault $name" >&2
            missing=1
        fi
    done
    [ "$missing" -eq 0 ]
}
