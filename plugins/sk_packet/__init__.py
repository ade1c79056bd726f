"""sk_packet: AF_PACKET sockets, SOCK_RAW and SOCK_DGRAM (criu/sk-packet.c).

Dump: a ``socket:[INODE]`` fd that is an AF_PACKET socket becomes a PACKETSK
entry of files.img (body ``psk``): type, protocol (an ethertype in network
byte order, as CRIU writes it and passes it to socket()), the interface it is
bound to (ifindex; 0: every interface), PACKET_VERSION, PACKET_RESERVE,
PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VNET_HDR, PACKET_LOSS,
PACKET_TIMESTAMP, PACKET_COPY_THRESH, its memberships (PACKET_ADD_MEMBERSHIP:
promiscuous, all-multicast, multicast and unicast addresses), its fanout
group (id, mode and flags), status flags and SOL_SOCKET options with the
classic BPF filter (plugins/sk_netlink/socks.py). All but the options come
from sock_diag (packet_diag, as CRIU), asked in the socket's own network
namespace.

Refused at dump, naming the fd, the tree left running:
- a TPACKET ring (PACKET_RX_RING, PACKET_TX_RING: libpcap's, so tcpdump's):
  CRIU remakes the ring and maps the socket again where the task had it;
  here memory is the mem plugin's, which has no socket mapping to make, so
  the ring is refused rather than the task coming back without it;
- a fanout group steered by a BPF program (PACKET_FANOUT_CBPF/EBPF: the
  program is not readable back), PACKET_QDISC_BYPASS, PACKET_IGNORE_OUTGOING
  or PACKET_TX_HAS_OFF set (packet_sock_entry has no field for them), a
  membership added more than once (it keeps no count);
- a socket of another network namespace than its task's, a locked filter.
Dropped on purpose (as CRIU): packets waiting in the receive queue (a
capture loses the packets of the time it is frozen anyway, and those
already queued cannot be given back to the kernel), PACKET_STATISTICS
counters (reading them resets them), PACKET_TX_TIMESTAMP (no getsockopt
reads it).

Restore: socket(AF_PACKET, type, protocol) made by the task, its
options, bound to the interface, the PACKET_* options, memberships, then
its fanout group (which needs a bound socket), then O_NONBLOCK. Refused at
collect (files.img, naming the field): an unknown type, version, timestamp
source, fanout mode or flag, membership type; a ring in the image;
impossible buffer sizes.
"""
from __future__ import annotations

import fcntl
import logging
import os
import socket
import struct

from engine import hookimpl
from engine.fds import claiming_fdinfo, pidfd_getfd
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.sk_packet")

DIAG = StashKey()        # dump: netns inode -> {socket inode: packet_diag facts}

SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP, PACKET_COPY_THRESH, PACKET_AUXDATA, PACKET_ORIGDEV = 1, 7, 8, 9
PACKET_VERSION, PACKET_RESERVE, PACKET_LOSS, PACKET_VNET_HDR = 10, 12, 14, 15
PACKET_TIMESTAMP, PACKET_FANOUT, PACKET_TX_HAS_OFF, PACKET_QDISC_BYPASS = 17, 18, 19, 20
PACKET_IGNORE_OUTGOING = 23
VERSIONS = {0: "TPACKET_V1", 1: "TPACKET_V2", 2: "TPACKET_V3"}
MR_TYPES = {0: "PACKET_MR_MULTICAST", 1: "PACKET_MR_PROMISC", 2: "PACKET_MR_ALLMULTI",
            3: "PACKET_MR_UNICAST"}
FANOUT_CBPF, FANOUT_EBPF, FANOUT_MODES = 6, 7, 8          # HASH LB CPU ROLLOVER RND QM
FANOUT_FLAG_UNIQUEID = 0x2000
FANOUT_FLAGS = 0x1000 | FANOUT_FLAG_UNIQUEID | 0x4000 | 0x8000
# SOF_TIMESTAMPING_* bits PACKET_TIMESTAMP takes (SOF_TIMESTAMPING_MASK of 6.x)
TIMESTAMP_MASK = (1 << 18) - 1
NO_FANOUT = 0xFFFFFFFF         # packet_sock_entry's default: in no group
MAX_RESERVE = 1 << 16
FLAGS = os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC | fcntl.FASYNC


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_fd(ctx, task, fd, link, stat):
    if not link.startswith("socket:["):
        return None
    sock = socket.socket(fileno=pidfd_getfd(task.pid, fd))
    try:
        if sock.family != socket.AF_PACKET:
            return None
        where = f"task {task.pid}: fd {fd} ({link})"
        from plugins.sk_netlink import socks
        socks.check_netns(sock, task.pid, where)
        info = _diag(ctx, sock).get(stat.st_ino)
        if info is None:
            raise ValueError(f"{where}: sock_diag does not list this packet socket")
        return _describe(sock, stat.st_ino, info, claiming_fdinfo(ctx, task.pid, fd)["flags"],
                         where)
    finally:
        sock.close()


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    for file_id, entry in ctx.provided("files").items():
        if entry.HasField("psk"):
            _check(file_id, entry.psk)


@hookimpl
def engine_restore_file(ctx, entry):
    if not entry.HasField("psk"):
        return None
    from plugins.sk_netlink import socks
    p = entry.psk
    sock = socket.socket(socket.AF_PACKET, p.type, p.protocol)
    try:
        socks.restore_opts(sock, p.opts)
        if p.ifindex:
            try:
                # Python's sockaddr_ll takes the protocol in host order
                sock.bind((socket.if_indextoname(p.ifindex), socket.ntohs(p.protocol)))
            except OSError as e:
                raise OSError(e.errno, f"packet socket id {entry.id}: bind to interface "
                                       f"{p.ifindex}: {e.strerror}") from None
        _restore_packet_opts(sock, p)
        if p.fanout != NO_FANOUT:
            sock.setsockopt(SOL_PACKET, PACKET_FANOUT, p.fanout & ~(FANOUT_FLAG_UNIQUEID << 16))
        status = fcntl.fcntl(sock.fileno(), fcntl.F_GETFL)
        fcntl.fcntl(sock.fileno(), fcntl.F_SETFL,
                    (status & ~(os.O_NONBLOCK | fcntl.FASYNC))
                    | (p.flags & (os.O_NONBLOCK | fcntl.FASYNC)))
    except BaseException:
        sock.close()
        raise
    return sock.detach()


# --- helpers -------------------------------------------------------------------

def _diag(ctx, sock: socket.socket) -> dict[int, dict]:
    from plugins.sk_netlink import socks
    netns = socks.netns_of(sock)
    tables = ctx.stash.setdefault(DIAG, {})
    if netns not in tables:
        from plugins.sk_packet.diag import packet_sockets
        with socks.diag_socket(sock) as diag:
            tables[netns] = packet_sockets(diag)
    return tables[netns]


def _describe(sock: socket.socket, ino: int, info: dict, flags: int, where: str):
    from engine.images.entries import file_entry
    from plugins.sk_netlink import socks
    from plugins.sk_packet.diag import PDI_AUXDATA, PDI_LOSS, PDI_ORIGDEV, PDI_VNETHDR
    for ring in ("rx_ring", "tx_ring"):
        if info[ring] is not None:
            raise ValueError(f"{where}: a packet socket with a TPACKET ring mapped "
                             f"({ring.replace('_', ' ')}, as libpcap's): the ring's mapping "
                             "cannot be made again")
    for opt, name in ((PACKET_QDISC_BYPASS, "PACKET_QDISC_BYPASS"),
                      (PACKET_IGNORE_OUTGOING, "PACKET_IGNORE_OUTGOING"),
                      (PACKET_TX_HAS_OFF, "PACKET_TX_HAS_OFF")):
        if sock.getsockopt(SOL_PACKET, opt):
            raise ValueError(f"{where}: a packet socket with an option its image cannot "
                             f"hold ({name} set)")
    fanout = info["fanout"]
    if fanout is not None:          # packet_diag leaves out the flags (ROLLOVER...)
        fanout = sock.getsockopt(SOL_PACKET, PACKET_FANOUT)
    if fanout is not None and (fanout >> 16) & 0xFF in (FANOUT_CBPF, FANOUT_EBPF):
        raise ValueError(f"{where}: a packet fanout group steered by a BPF program "
                         "(PACKET_FANOUT_CBPF/EBPF: it cannot be read back)")
    entry = file_entry(
        "PACKETSK", "psk", type=info["type"], protocol=socket.htons(info["protocol"]),
        flags=flags & ~os.O_CLOEXEC, ifindex=info["ifindex"], version=info["version"],
        reserve=info["reserve"], aux_data=bool(info["flags"] & PDI_AUXDATA),
        orig_dev=bool(info["flags"] & PDI_ORIGDEV),
        vnet_hdr=bool(info["flags"] & PDI_VNETHDR), loss=bool(info["flags"] & PDI_LOSS),
        timestamp=info["timestamp"], copy_thresh=info["copy_thresh"])
    p = entry.psk
    for ifindex, count, kind, addr in info["mclist"]:
        if count > 1:
            raise ValueError(f"{where}: a packet membership added more than once "
                             f"({MR_TYPES.get(kind, kind)} on interface {ifindex}, {count} "
                             "times: the image keeps it once)")
        p.mclist.add(index=ifindex, type=kind, addr=addr)
    if fanout is not None:
        p.fanout = fanout
    socks.dump_opts(sock, p.opts, where)
    return entry


def _restore_packet_opts(sock: socket.socket, p) -> None:
    def so(opt, value):
        sock.setsockopt(SOL_PACKET, opt, int(value))
    if p.version:
        so(PACKET_VERSION, p.version)
    if p.reserve:
        so(PACKET_RESERVE, p.reserve)
    for opt, on in ((PACKET_AUXDATA, p.aux_data), (PACKET_ORIGDEV, p.orig_dev),
                    (PACKET_VNET_HDR, p.vnet_hdr), (PACKET_LOSS, p.loss)):
        if on:
            so(opt, 1)
    if p.timestamp:
        so(PACKET_TIMESTAMP, p.timestamp)
    if p.copy_thresh:
        so(PACKET_COPY_THRESH, p.copy_thresh)
    for m in p.mclist:
        # struct packet_mreq: mr_ifindex, mr_type, mr_alen, mr_address[8]
        sock.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP,
                        struct.pack("iHH8s", m.index, m.type, len(m.addr), m.addr))


def _check(file_id: int, p) -> None:
    from plugins.sk_netlink import socks
    where = f"files.img: packet socket id {file_id}"
    if p.type not in (socket.SOCK_RAW, socket.SOCK_DGRAM):
        raise ImageError(where, f"type {p.type} is not SOCK_RAW or SOCK_DGRAM")
    if p.protocol > 0xFFFF:
        raise ImageError(where, f"protocol {p.protocol:#x} is not an ethertype")
    if p.version not in VERSIONS:
        raise ImageError(where, f"version {p.version} is not a TPACKET version")
    if p.reserve > MAX_RESERVE:
        raise ImageError(where, f"reserve {p.reserve} is over {MAX_RESERVE}")
    if p.timestamp & ~TIMESTAMP_MASK:
        raise ImageError(where, f"timestamp {p.timestamp:#x} holds unknown bits")
    if p.HasField("rx_ring") or p.HasField("tx_ring"):
        raise ImageError(where, "rx_ring/tx_ring: TPACKET rings are not restored")
    for i, m in enumerate(p.mclist):
        if m.type not in MR_TYPES:
            raise ImageError(where, f"mclist[{i}].type {m.type} is not a membership type")
        if len(m.addr) > 8:
            raise ImageError(where, f"mclist[{i}].addr has {len(m.addr)} bytes, over 8")
    if p.fanout != NO_FANOUT:
        mode, flags = (p.fanout >> 16) & 0xFF, (p.fanout >> 16) & 0xFF00
        if mode >= FANOUT_MODES or mode in (FANOUT_CBPF, FANOUT_EBPF):
            raise ImageError(where, f"fanout mode {mode} is not restored")
        if flags & ~FANOUT_FLAGS:
            raise ImageError(where, f"fanout flags {flags:#x} hold unknown bits")
    if p.flags & ~FLAGS:
        raise ImageError(where, f"flags {p.flags:#o} hold unknown bits {p.flags & ~FLAGS:#o}")
    socks.check_opts(p.opts, where)
