#!/usr/bin/env bats
# `vhostsplice drive` as a scripted front-end against a real worker: frames both ways, pcap, --listen,
# --features, and drive's own exit codes (README "Scripted error handling").

load helpers

setup() { vs_setup; }
teardown() { vs_teardown; }

HOST_IP=198.18.77.1
GUEST_IP=198.18.77.2
GUEST_MAC=02:00:00:00:77:02

# tap_side_sends N: N UDP datagrams from the tap's side of the namespace towards the "guest"
# (a static neighbour entry, so no ARP: exactly N frames reach the guest's RX ring).
tap_side_sends() {
    ip -n "$NS" addr add "$HOST_IP/24" dev "$TAP"
    ip -n "$NS" neigh replace "$GUEST_IP" lladdr "$GUEST_MAC" dev "$TAP"
    ip netns exec "$NS" bash -c "for i in \$(seq 1 $1); do echo vsb-frame-\$i >/dev/udp/$GUEST_IP/9; done"
}

# drive_bg [drive options...]: drive in the background (summary in $W/drive.json); sets DPID.
drive_bg() {
    $VS drive --socket-path "$SOCK" --ready-file "$W/ready" "$@" >"$W/drive.json" 2>"$W/drive.err" 3>&- &
    DPID=$!
    PIDS+=("$DPID")
}

# pcap_frames FILE: how many frames FILE holds that carry a vsb-frame- payload.
pcap_frames() {
    "$PY" - "$1" <<'EOF'
import struct, sys
data = open(sys.argv[1], "rb").read()
magic, _, _, _, _, _, link = struct.unpack_from("<IHHiIII", data)
assert magic == 0xA1B2C3D4 and link == 1, "not an Ethernet pcap"
off = 24
count = 0
while off < len(data):
    _s, _u, incl, orig = struct.unpack_from("<IIII", data, off)
    frame = data[off + 16:off + 16 + incl]
    assert incl == orig == len(frame)
    count += b"vsb-frame-" in frame
    off += 16 + incl
print(count)
EOF
}

@test "drive: frames both ways, what the tap side sent is saved as pcap (exit 0)" {
    start_worker
    wait_listening
    drive_bg --send 10 --size 1000 --expect 3 --pcap "$W/rx.pcap" --timeout 10
    wait_file "$W/ready"
    tap_side_sends 3
    wait_exit "$DPID"
    [ "$code" -eq 0 ]
    [ "$(jget "$W/drive.json" rx.received)" -eq 3 ]
    [ "$(jget "$W/drive.json" tx.used)" -eq 10 ]
    [ "$(pcap_frames "$W/rx.pcap")" -eq 3 ]
    if command -v tcpdump >/dev/null; then         # a real pcap reader agrees, where there is one
        [ "$(tcpdump -r "$W/rx.pcap" -nn 2>/dev/null | grep -c "$GUEST_IP.9: UDP")" -eq 3 ]
    fi
    worker_exit
    [ "$code" -eq 0 ]
    stat_is rings.tx.packets 10
    stat_is rings.rx.packets 3
}

@test "drive --features 0x100000000 (VERSION_1 alone: no protocol features, MRG_RXBUF, EVENT_IDX): frames both ways" {
    start_worker
    wait_listening
    drive_bg --features 0x100000000 --send 5 --expect 2 --timeout 10
    wait_file "$W/ready"
    tap_side_sends 2
    wait_exit "$DPID"
    [ "$code" -eq 0 ]
    [ "$(jget "$W/drive.json" features.acked)" = 0x100000000 ]
    worker_exit
    [ "$code" -eq 0 ]
    stat_is features 0x100000000
    stat_is rings.rx.packets 2
}

@test "drive --features -EVENT_IDX,-MRG_RXBUF: names remove bits from the default set" {
    start_worker
    wait_listening
    drive --features -EVENT_IDX,-MRG_RXBUF --send 3
    [ "$dcode" -eq 0 ]
    [ "$(jget "$W/drive.json" features.acked)" = 0x150000000 ]     # VERSION_1 PROTOCOL_FEATURES INDIRECT_DESC
    worker_exit
    [ "$code" -eq 0 ]
    stat_is features 0x150000000
}

@test "drive --listen: a worker started with run --connect is served, both exit 0" {
    $VS drive --listen --socket-path "$W/fe.sock" --connect-timeout 20 --send 5 \
        >"$W/drive.json" 2>"$W/drive.err" 3>&- &
    DPID=$!
    PIDS+=("$DPID")
    wait_file "$W/fe.sock"
    # shellcheck disable=SC2086
    ip netns exec "$NS" $VS run --connect "$W/fe.sock" --tap "$TAP" --stats-file "$STATS" \
        </dev/null 2>"$W/worker.err" 3>&- &
    WPID=$!
    PIDS+=("$WPID")
    wait_exit "$DPID"
    [ "$code" -eq 0 ]
    [ "$(jget "$W/drive.json" mode)" = listen ]
    worker_exit
    [ "$code" -eq 0 ]
    stat_is rings.tx.packets 5
}

@test "drive exit 110 ETIMEDOUT: --expect with nothing sent on the tap (the worker still exits 0)" {
    start_worker
    wait_listening
    drive --expect 1 --timeout 0.5
    [ "$dcode" -eq 110 ]
    [ "$(jget "$W/drive.json" errno)" = ETIMEDOUT ]
    worker_exit
    [ "$code" -eq 0 ]                 # drive stopped the rings before it closed
}

@test "drive exit 104 ECONNRESET: the worker is stopped while drive waits for frames" {
    start_worker
    wait_listening
    drive_bg --expect 5 --timeout 30
    wait_file "$W/ready"
    kill -TERM "$WPID"
    worker_exit
    [ "$code" -eq 0 ]
    wait_exit "$DPID"
    [ "$code" -eq 104 ]
}

@test "drive exit 4 EINTR: SIGTERM to drive before its work is done (it still stops the rings: worker 0)" {
    start_worker
    wait_listening
    drive_bg --expect 5 --timeout 30
    wait_file "$W/ready"
    kill -TERM "$DPID"
    wait_exit "$DPID"
    [ "$code" -eq 4 ]
    worker_exit
    [ "$code" -eq 0 ]
}

@test "drive: SIGTERM during --hold ends the hold cleanly (drive 0, worker 0)" {
    start_worker
    wait_listening
    drive_bg --send 2 --hold 30
    wait_file "$W/ready"
    kill -TERM "$DPID"
    wait_exit "$DPID"
    [ "$code" -eq 0 ]
    [ "$(jget "$W/drive.json" rings_stopped_at.1)" -eq 2 ]
    worker_exit
    [ "$code" -eq 0 ]
}
