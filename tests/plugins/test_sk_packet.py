"""sk_packet: interface, protocol, PACKET_* options, memberships, fanout and
filter come back; TPACKET rings refused at dump; hostile images refused."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_packet_sockets_come_back(build_target, target_runner, dump_restore, tmp_path,
                                  variant):
    """A raw socket bound to lo with PACKET_AUXDATA and more, a datagram one
    on every interface: the target checks each itself, and captures on lo."""
    target = target_runner.start(build_target("sk_packet", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_packet_entries_hold_what_criu_writes(build_target, target_runner, tmp_path):
    """The PACKETSK entries hold CRIU's fields: ifindex, protocol in network
    byte order (as CRIU 4.2 writes ETH_P_ALL: 768), aux_data, the promiscuous
    membership, the fanout word (with its flags, which CRIU loses)."""
    import socket
    target = target_runner.start(build_target("sk_packet"))
    images = dump_to(target, tmp_path / "img")
    socks = {p.type: p for p in (e.psk for e in images.read("files") if e.HasField("psk"))}
    raw, dgram = socks[socket.SOCK_RAW], socks[socket.SOCK_DGRAM]
    assert (raw.ifindex, raw.protocol, raw.aux_data, raw.orig_dev) == (1, 0x0300, True, True)
    assert (raw.version, raw.reserve, raw.fanout) == (1, 0x4e, 0x4e4b | ((0x1000 | 2) << 16))
    assert [(m.index, m.type) for m in raw.mclist] == [(1, 1)]
    # ret #0x40004 as CRIU 4.2 encodes it: code << 48 | jt << 40 | jf << 32 | k
    assert list(raw.opts.so_filter) == [0x06 << 48 | 0x40004] and not raw.HasField("rx_ring")
    assert (dgram.ifindex, dgram.protocol, dgram.loss, dgram.fanout) == (0, 0x0008, True,
                                                                          0xFFFFFFFF)


def test_tpacket_ring_is_refused(build_target, target_runner, tmp_path):
    """A socket with a TPACKET_V3 rx ring mapped (libpcap's): the dump fails
    naming the fd and the ring, and the target runs on."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_packet"), "--ring")
    line = engine_fails("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"))
    assert f"task {target.pid}: fd " in line, line
    assert "a packet socket with a TPACKET ring mapped (rx ring" in line, line
    assert not task_gone(target.pid), "a refused dump must leave the target running"


def _raw(files):
    import socket
    return next(e for e in files if e.HasField("psk") and e.psk.type == socket.SOCK_RAW)


@pytest.mark.parametrize("field, value, want", [
    ("type", 5, "type 5 is not SOCK_RAW or SOCK_DGRAM"),
    ("protocol", 0x10000, "protocol 0x10000 is not an ethertype"),
    ("version", 3, "version 3 is not a TPACKET version"),
    ("fanout", 0x4e4b | (7 << 16), "fanout mode 7 is not restored"),
    ("fanout", 0x4e4b | (0x0102 << 16), "fanout flags 0x100 hold unknown bits"),
    ("mclist", 9, "mclist[0].type 9 is not a membership type"),
    ("rx_ring", 1, "rx_ring/tx_ring: TPACKET rings are not restored"),
    ("so_sndbuf", 1 << 30, "opts.so_sndbuf = 1073741824 is not a buffer size"),
])
def test_hostile_packet_entry_is_refused(build_target, target_runner, tmp_path, field, value,
                                         want):
    """files.img edited with the protobuf classes: one line naming the image,
    the socket and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_packet"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = _raw(files)
    p = victim.psk
    if field == "mclist":
        p.mclist[0].type = value
    elif field == "rx_ring":
        r = p.rx_ring
        r.block_size, r.block_nr, r.frame_size, r.frame_nr = 1 << 16, 2, 1 << 11, 64
        r.retire_tmo = r.sizeof_priv = r.features = 0
    elif field.startswith("so_"):
        setattr(p.opts, field, value)
    else:
        setattr(p, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: packet socket id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)


def test_disabled_plugin_refuses_the_image(build_target, target_runner, tmp_path):
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("sk_packet"))
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "--disable", "sk_packet", "-D", img)
    assert "file:PACKETSK" in line, line
    assert task_gone(target.pid)


def test_crit_decodes_packet_entries(build_target, target_runner, tmp_path):
    """Debian's crit decodes files.img with the psk bodies as CRIU 4.2 writes
    them (ETH_P_ALL as 768, the promiscuous membership)."""
    import json
    import shutil
    import subprocess
    if shutil.which("crit") is None:
        pytest.skip("crit is not installed")
    target = target_runner.start(build_target("sk_packet"))
    img = tmp_path / "img"
    dump_to(target, img)
    out = subprocess.run(["crit", "decode", "-i", str(img / "files.img")],
                         capture_output=True, text=True, check=True).stdout
    bodies = [e["psk"] for e in json.loads(out)["entries"] if "psk" in e]
    assert sorted(b["protocol"] for b in bodies) == [8, 768]
    assert [m["type"] for b in bodies for m in b.get("mclist", [])] == [1]
