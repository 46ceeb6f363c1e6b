#!/usr/bin/env bats
# `vhostsplice drive` without a worker (no root needed): usage errors, no worker, the fault table.

load helpers

setup() {
    W=$BATS_TEST_TMPDIR
}

@test "drive exit 22 EINVAL: bad usage (unknown fault, unknown feature, no socket, misplaced --fault-after)" {
    local args
    for args in "--socket-path $W/s --fault no-such-fault" \
                "--socket-path $W/s --features VERSION_1,NO_SUCH_FEATURE" \
                "--socket-path $W/s --features 0xZZ" \
                "--send 1" \
                "--socket-path $W/s --fault no-version-1 --fault-after 3" \
                "--socket-path $W/s --queue-size 100" \
                "--socket-path $W/s --no-such-option"; do
        code=0
        # shellcheck disable=SC2086
        $VS drive $args >/dev/null 2>"$W/err" || code=$?
        echo "drive $args -> $code: $(cat "$W/err")" >&2
        [ "$code" -eq 22 ]
    done
}

@test "drive exit 111 ECONNREFUSED: no worker listens (after --connect-timeout)" {
    code=0
    $VS drive --socket-path "$W/nobody.sock" --connect-timeout 0.3 --send 1 >"$W/drive.json" 2>"$W/err" || code=$?
    [ "$code" -eq 111 ]
    [ "$(jget "$W/drive.json" errno)" = ECONNREFUSED ]
    grep -q "no worker listening" "$W/err"
}

@test "drive --list-faults: one row per fault with the worker's exit code or counter" {
    run $VS drive --list-faults
    [ "$status" -eq 0 ]
    [[ $output == *"descriptor-loop"*"74 EBADMSG"* ]]
    [[ $output == *"address-outside-memory"*"14 EFAULT"*"rings.tx.drops_fault == 1"* ]]
    [[ $output == *"vanish"*"104 ECONNRESET"* ]]
    [[ $output == *"no-version-1"*"95 ENOTSUP"* ]]
    [[ $output == *"malformed-message"*"71 EPROTO"* ]]
    run $VS drive --list-faults --json
    [ "$status" -eq 0 ]
    [[ $output == *'"name": "avail-idx-jump"'* ]]
}

@test "drive --help documents drive's own exit codes" {
    run $VS drive --help
    [ "$status" -eq 0 ]
    for word in ECONNREFUSED ETIMEDOUT EREMOTEIO EINTR --fault --list-faults --pcap --expect --hold; do
        [[ $output == *"$word"* ]]
    done
}

@test "run --help teaches the ownership options" {
    run $VS run --help
    [ "$status" -eq 0 ]
    for word in --socket-mode --socket-group --allow-uid SO_PEERCRED --user "Ownership and privileges" EPROTO; do
        [[ $output == *"$word"* ]]
    done
}
