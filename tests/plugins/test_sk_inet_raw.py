"""sk_inet's raw and ICMP "ping" sockets (IPv4, IPv6): protocol, binding,
peer, ident, ICMP filters, IP_RECVERR, SO_TIMESTAMP and the socket filter
come back; hostile images refused at collect."""
from pathlib import Path

import pytest

from engine.testing import dump_to

GROUP_RANGE = Path("/proc/sys/net/ipv4/ping_group_range")


@pytest.fixture
def ping_sockets_allowed():
    """ICMP ping sockets for root's group, as long as the test lasts."""
    old = GROUP_RANGE.read_text()
    GROUP_RANGE.write_text("0 0")
    yield
    GROUP_RANGE.write_text(old)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_raw_and_ping_sockets_come_back(build_target, target_runner, dump_restore, tmp_path,
                                        ping_sockets_allowed, variant):
    """Raw ICMP, ICMPv6 and IPPROTO_RAW sockets, ping sockets with their
    idents: the target checks each itself and exchanges echoes after restore."""
    target = target_runner.start(build_target("sk_raw", variant), "--ping")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_raw_entries_hold_what_criu_writes(build_target, target_runner, tmp_path):
    """INETSK entries with CRIU's type, proto and ip_opts.raw: the ICMP
    filter in icmpv_filter, IP_HDRINCL in hdrincl."""
    import socket
    target = target_runner.start(build_target("sk_raw"))
    images = dump_to(target, tmp_path / "img")
    socks = {(i.family, i.proto): i for i in
             (e.isk for e in images.read("files") if e.HasField("isk"))}
    raw = socks[(socket.AF_INET, socket.IPPROTO_ICMP)]
    assert raw.type == socket.SOCK_RAW and list(raw.ip_opts.raw.icmpv_filter) == [0x4e4cfffe]
    assert raw.ip_opts.recverr and raw.opts.so_timestamp == 1 and len(raw.opts.so_filter) == 1
    assert len(socks[(socket.AF_INET6, socket.IPPROTO_ICMPV6)].ip_opts.raw.icmpv_filter) == 8
    rawip = socks[(socket.AF_INET, socket.IPPROTO_RAW)]
    assert rawip.ip_opts.raw.hdrincl and rawip.state == 1 and rawip.dst_port == 0


def _raw_icmp(files):
    import socket
    return next(e for e in files if e.HasField("isk") and e.isk.type == socket.SOCK_RAW
                and e.isk.proto == socket.IPPROTO_ICMP)


@pytest.mark.parametrize("field, value, want", [
    ("proto", 0, "type 3 with proto 0 is not TCP, UDP, ICMP ping or raw"),
    ("state", 10, "state LISTEN is not supported for raw (protocol 1)"),
    ("icmpv_filter", [1, 2], "ip_opts.raw.icmpv_filter has 2 words: want 1"),
    ("mtu_discover", 9, "ip_opts.mtu_discover = 9 is over 5"),
    ("so_timestamp", 7, "opts.so_timestamp = 7 is not one of [1, 2, 3, 4]"),
])
def test_hostile_raw_entry_is_refused(build_target, target_runner, tmp_path, field, value,
                                      want):
    """files.img edited with the protobuf classes: one line naming the image,
    the socket and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_raw"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = _raw_icmp(files)
    i = victim.isk
    if field == "icmpv_filter":
        del i.ip_opts.raw.icmpv_filter[:]
        i.ip_opts.raw.icmpv_filter.extend(value)
    elif field == "mtu_discover":
        i.ip_opts.mtu_discover = value
    elif field == "so_timestamp":
        i.opts.so_timestamp = value
    else:
        setattr(i, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: inet socket id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)
