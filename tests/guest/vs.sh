# shellcheck shell=sh
# Helpers for guest test scripts (busybox sh), installed as /lib/vs.sh. The host reads the VSG: lines
# off the serial console (tests/support/guest.py parses them):
#   VSG:CHECK NAME ok|fail rc=N     one check; its output follows between BEGIN NAME / END NAME
#   VSG:BEGIN NAME / VSG:END NAME   a command's output, verbatim (iperf3 -J: one JSON document)
#   VSG:<anything>                  vs_mark's free-form markers (e.g. READY-FOR-PING)
# A failed check is appended to /tmp/vs.failed; /init reports their count as DONE rc=N.

# Markers go to the console even from inside vs_check (whose output is captured until the command ends).
vs_mark() {
    if [ -c /dev/console ]; then echo "VSG:$*" > /dev/console; else echo "VSG:$*"; fi
}

vs_uptime() { cut -d' ' -f1 /proc/uptime; }

# vs_check NAME CMD...: run CMD, print its output between markers and the verdict.
vs_check() {
    _name=$1
    shift
    "$@" > /tmp/vs.out 2>&1
    _rc=$?
    vs_mark BEGIN "$_name"
    cat /tmp/vs.out
    vs_mark END "$_name"
    if [ $_rc -eq 0 ]; then
        vs_mark CHECK "$_name" ok "rc=0"
    else
        vs_mark CHECK "$_name" fail "rc=$_rc"
        echo "$_name" >> /tmp/vs.failed
    fi
    return $_rc
}

# vs_icmp_in: ICMP echo requests this guest has received (Icmp: InEchos of /proc/net/snmp).
vs_icmp_in() {
    awk '/^Icmp:/ { if (!n) { for (i = 1; i <= NF; i++) col[$i] = i; n = 1 } else print $col["InEchos"] }' \
        /proc/net/snmp
}

# vs_wait_pings COUNT TIMEOUT: announce READY-FOR-PING, then wait until COUNT more echo requests arrived.
vs_wait_pings() {
    _want=$(( $(vs_icmp_in) + $1 ))
    _end=$(( $(cut -d. -f1 /proc/uptime) + $2 ))
    vs_mark READY-FOR-PING "count=$1"
    while [ "$(vs_icmp_in)" -lt "$_want" ]; do
        [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ] && { echo "got $(vs_icmp_in), wanted $_want"; return 1; }
        sleep 0.1
    done
    echo "received $(vs_icmp_in) echo requests"
}

# vs_ping NAME COUNT: ping the peer COUNT times (0.2 s apart); every reply must come back.
vs_ping() {
    vs_check "$1" _vs_ping_all "$2"
}
_vs_ping_all() {
    ping -c "$1" -i 0.2 -W 3 "$VS_PEER" > /tmp/vs.ping 2>&1
    cat /tmp/vs.ping
    grep -q "^$1 packets transmitted, $1 packets received" /tmp/vs.ping
}

# vs_iperf NAME IPERF3-ARGS...: iperf3 client to the peer (JSON output, no interval reports).
vs_iperf() {
    _name=$1
    shift
    vs_check "$_name" iperf3 -c "$VS_PEER" -J -i 0 "$@"
}

# vs_wait_carrier 0|1 TIMEOUT: wait until eth0's carrier is down (0) or up (1); prints how long it took.
vs_wait_carrier() {
    _t0=$(vs_uptime)
    _end=$(( $(cut -d. -f1 /proc/uptime) + $2 ))
    while [ "$(cat "/sys/class/net/$VS_DEV/carrier" 2>/dev/null)" != "$1" ]; do
        [ "$(cut -d. -f1 /proc/uptime)" -ge "$_end" ] && { echo "carrier still not $1 after $2 s"; return 1; }
        sleep 0.05
    done
    echo "carrier=$1 after $(awk -v a="$_t0" -v b="$(vs_uptime)" 'BEGIN { printf "%.2f", b - a }') s"
}

# vs_wait_peer TIMEOUT: ping the peer once a second until it answers; prints how long it took.
vs_wait_peer() {
    _t0=$(vs_uptime)
    _n=0
    while ! ping -c 1 -W 1 "$VS_PEER" > /dev/null 2>&1; do
        _n=$((_n + 1))
        [ $_n -ge "$1" ] && { echo "no answer from $VS_PEER in $_n tries"; return 1; }
    done
    echo "peer answered after $(awk -v a="$_t0" -v b="$(vs_uptime)" 'BEGIN { printf "%.2f", b - a }') s, $_n lost"
}

# vs_counter FILE SECTION KEY: one counter of /proc/net/snmp or /proc/net/netstat, e.g.
#   vs_counter /proc/net/netstat IpExt InTruncatedPkts
vs_counter() {
    awk -v sec="$2:" -v key="$3" '$1 == sec { if (!h) { for (i = 2; i <= NF; i++) c[$i] = i; h = 1 }
                                             else if (c[key]) print $c[key] }' "$1"
}

# vs_fwcfg_bin NAME: install the program QEMU hands over as fw_cfg file opt/t/NAME as /tmp/bin/NAME.
vs_fwcfg_bin() {
    mkdir -p /tmp/bin
    cat "/sys/firmware/qemu_fw_cfg/by_name/opt/t/$1/raw" > "/tmp/bin/$1" && chmod 0755 "/tmp/bin/$1"
}

# vs_queues [DEV]: DEV's queue directories in sysfs (rx-N tx-N), on one line.
vs_queues() {
    # shellcheck disable=SC2046,SC2005  # split on purpose: echo joins ls's lines with single spaces
    echo $(ls "/sys/class/net/${1:-$VS_DEV}/queues")
}
