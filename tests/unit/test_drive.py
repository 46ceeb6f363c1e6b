"""`vhostsplice drive` without a worker: feature parsing, the fault table, pcap, the command line, and
every ring fault's injector run against the C core (no root, no worker: tests/integration has those)."""
from __future__ import annotations

import errno
import json
import os
import re
import socket
from pathlib import Path

import pytest

from vhostsplice.cli import main
from vhostsplice.device.datapath import BROKEN_REASONS, STAT_FIELDS, Datapath
from vhostsplice.tools.exits import DRIVE_EXITS
from vhostsplice.tools.features import FEATURE_NAMES, feature_names, parse_features
from vhostsplice.tools.pcap import Pcap, read_pcap
from vhostsplice.errors import EXIT_TABLE, ConfigError, GuestFaultError, GuestRingError
from vhostsplice.spec import Feature as F, bit, mask
from vhostsplice.testing import faults
from vhostsplice.testing.frontend import DEFAULT_FEATURES
from vhostsplice.testing.harness import demo_frame
from vhostsplice.testing.virtq import NET_HDR_LEN, DriverQueue, GuestMemory

V1 = bit(F.F_VERSION_1)
SHELL_TESTS = Path(__file__).resolve().parents[1] / "shell"


# -- --features ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,want", [
    ("VERSION_1", V1),
    ("version_1,mrg_rxbuf", V1 | bit(F.NET_F_MRG_RXBUF)),
    ("VIRTIO_F_VERSION_1+VIRTIO_NET_F_MRG_RXBUF+VIRTIO_RING_F_EVENT_IDX",
     mask(F.F_VERSION_1, F.NET_F_MRG_RXBUF, F.RING_F_EVENT_IDX)),
    ("VERSION_1,PROTOCOL_FEATURES,VHOST_USER_F_PROTOCOL_FEATURES", V1 | bit(F.VHOST_USER_F_PROTOCOL_FEATURES)),
    ("0x100008000", V1 | bit(F.NET_F_MRG_RXBUF)),
    ("0x100000000,CSUM,GUEST_CSUM", V1 | mask(F.NET_F_CSUM, F.NET_F_GUEST_CSUM)),
    ("default", DEFAULT_FEATURES),
    ("default,CSUM", DEFAULT_FEATURES | bit(F.NET_F_CSUM)),
    ("-EVENT_IDX", DEFAULT_FEATURES & ~bit(F.RING_F_EVENT_IDX)),
    ("-EVENT_IDX,-MRG_RXBUF", DEFAULT_FEATURES & ~mask(F.RING_F_EVENT_IDX, F.NET_F_MRG_RXBUF)),
    ("default,-VERSION_1", DEFAULT_FEATURES & ~V1),
    (" VERSION_1 , IN_ORDER ", V1 | bit(F.F_IN_ORDER)),
])
def test_parse_features(text, want):
    assert parse_features(text) == want


@pytest.mark.parametrize("text", ["", ",", "NO_SUCH", "VERSION_1,BOGUS", "0xZZ", "0x1" + "0" * 17, "-"])
def test_parse_features_errors_are_einval(text):
    with pytest.raises(ConfigError) as info:
        parse_features(text)
    assert info.value.errno == errno.EINVAL


def test_feature_names_round_trip():
    assert set(FEATURE_NAMES) >= {"VERSION_1", "MRG_RXBUF", "INDIRECT_DESC", "EVENT_IDX", "PROTOCOL_FEATURES",
                                  "IN_ORDER", "CSUM", "GUEST_CSUM", "GUEST_TSO4", "HOST_TSO4"}
    assert parse_features(",".join(feature_names(DEFAULT_FEATURES))) == DEFAULT_FEATURES
    assert feature_names(V1 | (1 << 50)) == ["VERSION_1", hex(1 << 50)]


# -- the fault table ----------------------------------------------------------------------------------------
def test_fault_table_has_the_required_faults():
    required = {"descriptor-loop", "avail-idx-jump", "head-out-of-range", "address-outside-memory",
                "chain-longer-than-ring", "nested-indirect", "vanish", "no-version-1", "malformed-message"}
    assert required <= set(faults.BY_NAME)
    assert len(faults.BY_NAME) == len(faults.FAULTS)


@pytest.mark.parametrize("fault", faults.FAULTS, ids=lambda f: f.name)
def test_fault_rows_are_consistent(fault):
    worker_codes = {code for code, _, _ in EXIT_TABLE if code > 0}
    assert fault.phase in (faults.SETUP, faults.RUNNING)
    assert fault.reaction in (faults.RING_ERROR, faults.USED_LEN_0, faults.CLOSED, faults.NONE)
    if fault.phase == faults.SETUP:
        assert fault.inject is None and fault.drop_features
    else:
        assert callable(fault.inject)
    if fault.reaction == faults.RING_ERROR:          # ring corruption: EBADMSG whatever --on-guest-error says
        assert fault.exit == fault.exit_fault_exit == errno.EBADMSG
        assert fault.stat == "rings.tx.broken" and fault.value in BROKEN_REASONS.values()
    elif fault.reaction == faults.USED_LEN_0:        # per-chain fault: counted, or EFAULT in exit mode
        assert fault.exit is None and fault.exit_fault_exit == errno.EFAULT
        ring, _, field = fault.stat.partition(".")[2].partition(".")
        assert ring == "tx" and field in STAT_FIELDS and fault.value == 1
    else:
        assert fault.exit == fault.exit_fault_exit in worker_codes
        assert fault.stat == "errno" and fault.value == errno.errorcode[fault.exit]
    row = fault.row()
    assert json.loads(json.dumps(row)) == row


def test_every_fault_is_proved_by_a_shell_test():
    """tests/shell/faults.bats has one test per fault, named after the exit code the table gives."""
    text = (SHELL_TESTS / "faults.bats").read_text()
    names = re.findall(r'^@test "(.*)" \{', text, re.M)
    for fault in faults.FAULTS:
        tests = [n for n in names if n.endswith(f"(--fault {fault.name})")]
        assert tests, f"no shell test for {fault.name}"
        if fault.exit is not None:
            assert any(n.startswith(f"exit {fault.exit} {errno.errorcode[fault.exit]}:") for n in tests), tests
        else:
            assert any(n.startswith("exit 14 EFAULT:") for n in tests), tests
            assert any(n.startswith(f"counted {fault.stat.rsplit('.', 1)[1]}, exit 0:") for n in tests), tests


def test_table_text_lists_every_fault_with_its_code():
    text = faults.table_text()
    for fault in faults.FAULTS:
        line = next(ln for ln in text.splitlines() if ln.startswith(fault.name + " "))
        if fault.exit is not None:
            assert f"{fault.exit} {errno.errorcode[fault.exit]}" in line
        else:
            assert "14 EFAULT" in line and fault.stat in line


def test_unknown_fault_names_the_known_ones():
    with pytest.raises(KeyError, match="descriptor-loop"):
        faults.get("no-such-fault")


# -- the injectors against the C core (a socketpair as the tap) ------------------------------------------------
class FakeFrontend:
    """What an injector touches of Frontend: tx, mem, queue_size, notify (kicks are not needed here)."""

    def __init__(self, num: int, fault_exit: bool = False):
        self.buf = bytearray(2 << 20)
        self.mem = GuestMemory(self.buf, 0, 0x7F00_0000_0000)
        self.host, self.peer = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.host.setblocking(False)
        self.err = [os.eventfd(0, os.EFD_NONBLOCK) for _ in range(2)]
        self.dp = Datapath(self.host.fileno())
        self.dp.configure(mrg_rxbuf=True, event_idx=False, indirect=True, rx_max=NET_HDR_LEN + 1514,
                          fault_exit=fault_exit)
        self.dp.set_memory(self.mem.regions())
        self.queue_size = num
        self.tx = DriverQueue(self.mem, num)
        self.rx = DriverQueue(self.mem, num)
        for i, q in ((0, self.rx), (1, self.tx)):
            self.dp.start_ring(i, num=num, desc=q.desc_uva, avail=q.avail_uva, used=q.used_uva, err_fd=self.err[i])

    def notify(self, index: int) -> None:
        pass

    def close(self) -> None:
        self.dp.close()
        for fd in self.err:
            os.close(fd)
        self.host.close()
        self.peer.close()


@pytest.fixture
def fake():
    made = []

    def make(num=16, fault_exit=False):
        made.append(FakeFrontend(num, fault_exit))
        return made[-1]

    yield make
    for f in made:
        f.close()


def _stat(dp, path: str):
    ring, field = path.split(".")[1:]
    return dp.stats()[ring][field]


RING_FAULTS = [f for f in faults.FAULTS if f.reaction == faults.RING_ERROR]
COUNTED_FAULTS = [f for f in faults.FAULTS if f.reaction == faults.USED_LEN_0]


@pytest.mark.parametrize("fault", RING_FAULTS, ids=lambda f: f.name)
def test_ring_fault_injector_breaks_the_ring_as_the_table_says(fake, fault):
    fe = fake()
    fe.tx.add_out([demo_frame(0, 60)])
    fe.dp.poll()
    assert fe.tx.used() and fe.peer.recv(2048)              # a good frame first
    fault.inject(fe, demo_frame(1, 60))
    with pytest.raises(GuestRingError) as info:
        fe.dp.poll()
    assert info.value.errno == fault.exit
    assert _stat(fe.dp, fault.stat) == fault.value
    assert os.eventfd_read(fe.err[1]) == 1


@pytest.mark.parametrize("fault_exit", [False, True])
@pytest.mark.parametrize("fault", COUNTED_FAULTS, ids=lambda f: f.name)
def test_counted_fault_injector_is_counted_or_efault(fake, fault, fault_exit):
    fe = fake(fault_exit=fault_exit)
    info = fault.inject(fe, demo_frame(1, 60))
    if fault_exit:
        with pytest.raises(GuestFaultError) as exc:
            fe.dp.poll()
        assert exc.value.errno == fault.exit_fault_exit
    else:
        fe.dp.poll()
    assert fe.tx.used() == [(info["head"], 0)]
    assert _stat(fe.dp, fault.stat) == fault.value
    if not fault_exit:                                       # the ring goes on
        fe.tx.add_out([demo_frame(2, 60)])
        fe.dp.poll()
        assert len(fe.tx.used()) == 1 and _stat(fe.dp, "rings.tx.packets") == 1


@pytest.mark.parametrize("num", [256, 2048])
def test_descriptor_loop_breaks_the_ring_at_any_ring_size(fake, num):
    """A ring of 2048 entries runs out of the walk's 1024 iovecs before it has seen more descriptors than
    the ring holds; the walk goes on counting to the chain's end, so the loop still breaks the ring."""
    fe = fake(num=num)
    faults.BY_NAME["descriptor-loop"].inject(fe, demo_frame(1, 60))
    with pytest.raises(GuestRingError, match="loop"):
        fe.dp.poll()
    assert fe.tx.used() == [] and fe.dp.stats()["tx"]["broken"] is not None


# -- drive's own exit codes, pcap, the command line -----------------------------------------------------------
def test_drive_exit_codes_are_distinct_errnos():
    codes = [code for code, _, _ in DRIVE_EXITS]
    assert len(codes) == len(set(codes))
    for code, name, _ in DRIVE_EXITS:
        if code not in (0, 1):
            assert errno.errorcode[code] == name


def test_pcap_round_trip(tmp_path):
    frames = [demo_frame(i, 60 + i * 100) for i in range(5)]
    pcap = Pcap(str(tmp_path / "x.pcap"))
    for f in frames:
        pcap.write(f, stamp=1700000000.25)
    pcap.close()
    data = (tmp_path / "x.pcap").read_bytes()
    assert data[:4] == bytes.fromhex("d4c3b2a1") and data[20:24] == (1).to_bytes(4, "little")   # Ethernet
    assert read_pcap(str(tmp_path / "x.pcap")) == frames


def test_cli_list_faults(capsys):
    assert main(["drive", "--list-faults", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == [f.name for f in faults.FAULTS]
    assert main(["drive", "--list-faults"]) == 0
    assert "avail-idx-jump" in capsys.readouterr().out


@pytest.mark.parametrize("argv", [
    ["drive"],                                                             # no socket
    ["drive", "--socket-path", "/nonexistent/x", "--fault", "nope"],
    ["drive", "--socket-path", "/nonexistent/x", "--features", "NOPE"],
    ["drive", "--socket-path", "/nonexistent/x", "--queue-size", "100"],
    ["drive", "--socket-path", "/nonexistent/x", "--fault", "no-version-1", "--fault-after", "1"],
    ["drive", "--socket-path", "/nonexistent/x", "--size", "10"],
])
def test_cli_drive_usage_errors_are_einval(argv, capsys):
    assert main(argv) == errno.EINVAL


def test_cli_drive_no_worker_is_econnrefused_with_a_summary(tmp_path, capsys):
    code = main(["drive", "--socket-path", str(tmp_path / "none.sock"), "--connect-timeout", "0.2"])
    assert code == errno.ECONNREFUSED
    summary = json.loads(capsys.readouterr().out)
    assert summary["exit"] == errno.ECONNREFUSED and summary["drive"] == "failed"


def test_cli_drive_listen_refuses_an_existing_path(tmp_path, capsys):
    """Probing whether a socket file is stale would connect to whoever serves it: refuse instead."""
    existing = tmp_path / "taken.sock"
    existing.write_text("")
    assert main(["drive", "--listen", "--socket-path", str(existing), "--connect-timeout", "0.2"]) == errno.EINVAL
    assert existing.exists()
