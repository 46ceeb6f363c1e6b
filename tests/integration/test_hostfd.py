"""hostfd.open_tap against the real kernel, as root, each test in a private network namespace.

Kernel-facing checks run in a child Python inside the namespace (`ip netns exec NS python3 -c`),
which prints one JSON line; the test asserts on it. Name validation needs no root and runs here.
"""
from __future__ import annotations

import errno
import textwrap

import pytest

from vhostsplice.errors import ConfigError
from vhostsplice.host.hostfd import open_tap
from vhostsplice.host.tun import IFF_MULTI_QUEUE, IFF_NO_PI, IFF_TAP, IFF_VNET_HDR, validate_ifname

TAP = "vst0"
ETH_TEST = 0x88B5  # IEEE 802 "local experimental" ethertype: nothing else in the namespace uses it

PRELUDE = textwrap.dedent("""
    import errno, json, os, select, socket, struct, sys, time
    from vhostsplice import errors, spec
    from vhostsplice.host import hostfd, tun
    def out(**kw):
        print(json.dumps(kw)); sys.stdout.flush()
    def err_of(fn, *a, **kw):
        try:
            fn(*a, **kw)
        except errors.VhostspliceError as exc:
            return [type(exc).__name__, exc.errno, str(exc)]
        return None
    def sysnet(name, attr):
        with open(f"/sys/class/net/{name}/{attr}") as f:
            return f.read().strip()
    ETH_TEST = %d
    def frame(n, size=100):
        dst, src = bytes.fromhex("02aabbccdd01"), bytes.fromhex("02aabbccdd02")
        body = bytes((n + i) & 0xFF for i in range(size - 14))
        return dst + src + struct.pack("!H", ETH_TEST) + body
    def wait_readable(fd, timeout=5.0):
        return bool(select.select([fd], [], [], timeout)[0])
""" % ETH_TEST)


def run_in(netns, body: str, timeout: float = 60):
    return netns.python(PRELUDE + textwrap.dedent(body), timeout=timeout)


# -- no root needed -----------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["", "a" * 16, "a/b", "a b", "tab\there", "x\n", ".", "..", "a:b"])
def test_bad_name_is_config_error_einval(name):
    with pytest.raises(ConfigError) as info:
        open_tap(name)
    assert info.value.errno == errno.EINVAL


@pytest.mark.parametrize("kwargs", [{"mtu": 10}, {"vnet_hdr_len": 8}, {"bridge": "bad/name"}])
def test_bad_options_are_config_error_einval(kwargs):
    with pytest.raises(ConfigError) as info:
        open_tap("vstx", **kwargs)
    assert info.value.errno == errno.EINVAL


def test_longest_valid_name_passes_validation():
    assert validate_ifname("a" * 15) == b"a" * 15


# -- as root, in a private namespace ------------------------------------------------------------


@pytest.mark.root
def test_open_tap_creates_multiqueue_vnet_tap_up_with_mtu(netns):
    res = run_in(netns, f"""
        h = hostfd.open_tap("{TAP}", mtu=1400)
        name, flags, hdr = tun.read_tap_info(h.fd)
        out(name=name, flags=flags, hdr=hdr, created=h.created, kind=h.kind, mtu=h.mtu,
            hdr_len=h.vnet_hdr_len, sys_mtu=int(sysnet("{TAP}", "mtu")),
            sys_flags=int(sysnet("{TAP}", "flags"), 16), operstate=sysnet("{TAP}", "operstate"),
            cloexec=bool(os.get_inheritable(h.fd)), nonblock=not os.get_blocking(h.fd))
        h.close()
    """)
    assert res["name"] == TAP and res["kind"] == "tap" and res["created"] is True
    want = IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
    assert res["flags"] & want == want, hex(res["flags"])
    assert res["hdr"] == 12 and res["hdr_len"] == 12
    assert res["mtu"] == res["sys_mtu"] == 1400
    assert res["sys_flags"] & 0x1, "IFF_UP not set"
    assert res["operstate"] in ("up", "unknown")
    assert res["cloexec"] is False and res["nonblock"] is True


@pytest.mark.root
def test_up_false_leaves_link_down_and_close_removes_created_tap(netns):
    res = run_in(netns, f"""
        h = hostfd.open_tap("{TAP}", up=False)
        down = not (int(sysnet("{TAP}", "flags"), 16) & 1)
        h.close(); h.close()
        out(down=down, gone=not os.path.exists("/sys/class/net/{TAP}"), fd=h.fd)
    """)
    assert res == {"down": True, "gone": True, "fd": -1}


@pytest.mark.root
def test_offload_flags_accepted_and_bad_flags_keep_errno(netns):
    res = run_in(netns, f"""
        h = hostfd.open_tap("{TAP}")
        good = err_of(h.set_offload, spec.TUN_F_CSUM | spec.TUN_F_TSO4 | spec.TUN_F_TSO6
                      | spec.TUN_F_TSO_ECN)
        none = err_of(h.set_offload, 0)
        bad = err_of(h.set_offload, 0x40000000)
        h.close()
        closed = err_of(h.set_offload, 0)
        out(good=good, none=none, bad=bad, closed=closed)
    """)
    assert res["good"] is None and res["none"] is None
    assert res["bad"][0] == "SetupError" and res["bad"][1] == errno.EINVAL
    assert res["closed"][0] == "SetupError" and res["closed"][1] == errno.EBADF


@pytest.mark.root
def test_second_queue_attaches_to_existing_tap(netns):
    res = run_in(netns, f"""
        a = hostfd.open_tap("{TAP}")
        b = hostfd.open_tap("{TAP}", create=False)
        out(a=a.created, b=b.created, names=[tun.read_tap_info(h.fd)[0] for h in (a, b)],
            distinct=a.fd != b.fd, queues=len(os.listdir("/sys/class/net/{TAP}/queues")))
        a.close(); b.close()
    """)
    assert res["a"] is True and res["b"] is False
    assert res["names"] == [TAP, TAP] and res["distinct"]


@pytest.mark.root
def test_queue_without_vnet_hdr_reads_bare_frames(netns):
    res = run_in(netns, f"""
        import subprocess
        subprocess.run(["ip", "tuntap", "add", "dev", "{TAP}", "mode", "tap", "multi_queue", "vnet_hdr"],
                       check=True)                                     # as the benchmark makes its tap
        h = hostfd.open_tap("{TAP}", vnet_hdr_len=0)
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TEST))
        s.bind(("{TAP}", ETH_TEST))
        f = frame(1, 100)
        s.send(f)
        got = None
        while got is None and wait_readable(h.fd, 5.0):
            data = os.read(h.fd, 65536)
            if data[12:14] == struct.pack("!H", ETH_TEST):
                got = data.hex()
        out(hdr=h.vnet_hdr_len, flags=tun.read_tap_info(h.fd)[1], sent=f.hex(), got=got)
        h.close()
    """)
    assert res["hdr"] == 0 and not res["flags"] & IFF_VNET_HDR
    assert res["got"] == res["sent"]


@pytest.mark.root
@pytest.mark.parametrize("first,second", [(12, 0), (0, 12)])
def test_later_queue_follows_the_vnet_header_of_the_first(netns, first, second):
    """The tap's flags are set by the first queue attached: a later one gets them as they are, and
    open_tap reports the header the queue really carries, not the one asked for."""
    res = run_in(netns, f"""
        a = hostfd.open_tap("{TAP}", vnet_hdr_len={first})
        b = hostfd.open_tap("{TAP}", create=False, vnet_hdr_len={second})
        out(a=a.vnet_hdr_len, b=b.vnet_hdr_len, flags=tun.read_tap_info(b.fd)[1])
        b.close(); a.close()
    """)
    assert res["a"] == res["b"] == first
    assert bool(res["flags"] & IFF_VNET_HDR) == bool(first)


@pytest.mark.root
def test_create_false_on_missing_tap_is_enodev(netns):
    res = run_in(netns, f"""
        out(e=err_of(hostfd.open_tap, "{TAP}", create=False),
            exists=os.path.exists("/sys/class/net/{TAP}"))
    """)
    assert res["e"][:2] == ["SetupError", errno.ENODEV] and res["exists"] is False


@pytest.mark.root
def test_missing_bridge_is_enodev_and_creates_nothing(netns):
    res = run_in(netns, f"""
        out(e=err_of(hostfd.open_tap, "{TAP}", bridge="vstbr-missing"),
            exists=os.path.exists("/sys/class/net/{TAP}"))
    """)
    assert res["e"][:2] == ["SetupError", errno.ENODEV], res
    assert "vstbr-missing" in res["e"][2]
    assert res["exists"] is False


@pytest.mark.root
def test_bridge_becomes_master(netns):
    netns.run(["ip", "link", "add", "vstbr0", "type", "bridge"])
    res = run_in(netns, f"""
        h = hostfd.open_tap("{TAP}", bridge="vstbr0")
        out(master=os.path.basename(os.readlink("/sys/class/net/{TAP}/master")))
        h.close()
    """)
    assert res["master"] == "vstbr0"


@pytest.mark.root
def test_existing_non_tap_interface_keeps_kernel_errno(netns):
    netns.run(["ip", "link", "add", TAP, "type", "veth", "peer", "name", "vst1"])
    netns.run(["ip", "tuntap", "add", "dev", "vsttun", "mode", "tun"])
    res = run_in(netns, f"""
        out(veth=err_of(hostfd.open_tap, "{TAP}"), tun=err_of(hostfd.open_tap, "vsttun"))
    """)
    # tun_set_iff(): a device of that name that is not a tap (veth, or a tun) -> EINVAL
    assert res["veth"][:2] == ["SetupError", errno.EINVAL], res
    assert res["tun"][:2] == ["SetupError", errno.EINVAL], res


@pytest.mark.root
def test_frames_written_on_fd_arrive_on_interface_byte_exact(netns):
    res = run_in(netns, f"""
        h = hostfd.open_tap("{TAP}")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TEST))
        s.bind(("{TAP}", ETH_TEST))
        sent, got = [], []
        for n, size in enumerate((60, 100, 1514)):
            f = frame(n, size)
            os.write(h.fd, bytes(12) + f)
            sent.append(f.hex())
            if wait_readable(s.fileno()):
                got.append(s.recv(65536).hex())
        out(sent=sent, got=got)
        h.close()
    """)
    assert res["got"] == res["sent"]


@pytest.mark.root
def test_frames_sent_on_interface_are_read_from_fd_behind_vnet_header(netns):
    res = run_in(netns, f"""
        h = hostfd.open_tap("{TAP}")
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TEST))
        s.bind(("{TAP}", ETH_TEST))
        sent, got = [], []
        for n, size in enumerate((60, 100, 1514)):
            f = frame(n, size)
            s.send(f)
            sent.append(f.hex())
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline and wait_readable(h.fd, 1.0):
                data = os.read(h.fd, 65536)
                if data[12 + 12:12 + 14] == struct.pack("!H", ETH_TEST):  # skip other traffic
                    got.append([data[:10].hex(), data[12:].hex()])
                    break
        out(sent=sent, got=got)
        h.close()
    """)
    assert [g[1] for g in res["got"]] == res["sent"]
    # virtio_net_hdr: flags 0, gso_type NONE, no checksum offload for a plain AF_PACKET frame
    assert all(g[0] == "00" * 10 for g in res["got"]), res["got"]


@pytest.mark.root
@pytest.mark.parametrize("preexisting", [False, True])
def test_open_tap_without_mtu_or_bridge_needs_no_netlink_library(netns, preexisting):
    """The common case (no --mtu, no --bridge) sets the link up and reads its MTU with two ioctls:
    importing pyroute2 alone adds ~20 MiB to a worker's RSS (benchmarks/results/dpdk_bench.md)."""
    res = run_in(netns, f"""
        if {preexisting}:
            import subprocess
            subprocess.run(["ip", "tuntap", "add", "dev", "{TAP}", "mode", "tap", "multi_queue", "vnet_hdr"],
                           check=True)
            subprocess.run(["ip", "link", "set", "{TAP}", "mtu", "1300"], check=True)
        h = hostfd.open_tap("{TAP}")
        out(pyroute2="pyroute2" in sys.modules, mtu=h.mtu, created=h.created, sys_mtu=int(sysnet("{TAP}", "mtu")),
            up=bool(int(sysnet("{TAP}", "flags"), 16) & 1), hdr=tun.read_tap_info(h.fd)[2])
    """)
    assert res["pyroute2"] is False
    assert res["up"] and res["mtu"] == res["sys_mtu"] == (1300 if preexisting else 1500)
    assert res["created"] is not preexisting and res["hdr"] == 12
