import pytest

from vhostsplice.vhostuser import protocol as P
from vhostsplice.errors import ProtocolError
from vhostsplice.spec import FLAG_NEED_REPLY, FLAG_REPLY, MAX_PAYLOAD, Req


def msg(req, payload=b"", fds=()):
    return P.Message(req, 1, payload, tuple(fds))


def test_header_round_trip_and_flags():
    data = P.encode(Req.GET_FEATURES, b"x" * 8, reply=True, need_reply=True)
    hdr = P.decode_header(data[:12])
    assert (hdr.request, hdr.size) == (Req.GET_FEATURES, 8)
    assert hdr.flags & FLAG_REPLY and hdr.need_reply
    assert hdr.flags & FLAG_NEED_REPLY


@pytest.mark.parametrize("flags", [0, 2, 3])
def test_header_rejects_wrong_version(flags):
    with pytest.raises(ProtocolError, match="version"):
        P.decode_header(P.HEADER.pack(1, flags, 0))


def test_header_rejects_oversized_payload():
    with pytest.raises(ProtocolError, match="exceeds"):
        P.decode_header(P.HEADER.pack(1, 1, MAX_PAYLOAD + 1))


def test_header_rejects_short_input():
    with pytest.raises(ProtocolError):
        P.decode_header(b"\x01\x00")


def test_vring_addr_field_order_follows_the_spec():
    # vhost-user.rst: index, flags, descriptor, used, available, log
    addr = P.VringAddr(index=1, flags=0, desc=0x1000, used=0x3000, avail=0x2000, log=0)
    raw = P.encode_vring_addr(addr)
    assert raw[8:16] == (0x1000).to_bytes(8, "little")
    assert raw[16:24] == (0x3000).to_bytes(8, "little")
    assert P.decode_vring_addr(msg(Req.SET_VRING_ADDR, raw)) == addr


@pytest.mark.parametrize("size", [0, 7, 9, 40])
def test_fixed_payloads_must_have_exact_size(size):
    with pytest.raises(ProtocolError, match="expected 8"):
        P.decode_u64(msg(Req.SET_FEATURES, b"\0" * size))


def test_vring_file_index_and_nofd():
    vf = P.decode_vring_file(msg(Req.SET_VRING_KICK, P.encode_vring_file(1, nofd=True)))
    assert vf == P.VringFile(1, True)
    with pytest.raises(ProtocolError, match="reserved"):
        P.decode_vring_file(msg(Req.SET_VRING_KICK, P.encode_u64(1 << 20)))


def test_mem_table_round_trip():
    table = P.MemTable((P.MemRegion(0, 1 << 20, 0x7F0000000000, 0), P.MemRegion(1 << 32, 4096, 0x7F1000000000, 4096)))
    assert P.decode_mem_table(msg(Req.SET_MEM_TABLE, P.encode_mem_table(table))) == table


@pytest.mark.parametrize("count", [0, 9, 0xFFFFFFFF])
def test_mem_table_region_count_is_bounded(count):
    payload = P.MEM_HEADER.pack(count, 0) + b"\0" * 32
    with pytest.raises(ProtocolError, match="regions"):
        P.decode_mem_table(msg(Req.SET_MEM_TABLE, payload))


def test_mem_table_size_must_match_count():
    payload = P.MEM_HEADER.pack(2, 0) + b"\0" * 32
    with pytest.raises(ProtocolError, match="expected 72"):
        P.decode_mem_table(msg(Req.SET_MEM_TABLE, payload))


def test_request_names():
    assert P.request_name(Req.SET_MEM_TABLE) == "SET_MEM_TABLE"
    assert P.request_name(999) == "request 999"
