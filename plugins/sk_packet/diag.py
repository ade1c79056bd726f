"""packet_diag (linux/packet_diag.h) as pyroute2 messages, and its dump."""
from __future__ import annotations

import socket
import struct

from pyroute2.netlink import nla, nlmsg

PACKET_SHOW_INFO, PACKET_SHOW_MCLIST, PACKET_SHOW_RING_CFG = 0x1, 0x2, 0x4
PACKET_SHOW_FANOUT = 0x8
PDI_AUXDATA, PDI_ORIGDEV, PDI_VNETHDR, PDI_LOSS = 0x2, 0x4, 0x8, 0x10
MCLIST = struct.Struct("IIHH32s")         # packet_diag_mclist
RING = ("block_size", "block_nr", "frame_size", "frame_nr", "retire_tmo", "sizeof_priv",
        "features")


class packet_diag_req(nlmsg):
    fields = (("sdiag_family", "B"), ("sdiag_protocol", "B"), ("__pad", "H"),
              ("pdiag_ino", "I"), ("pdiag_show", "I"), ("pdiag_cookie", "Q"))


class packet_diag_msg(nlmsg):
    fields = (("pdiag_family", "B"), ("pdiag_type", "B"), ("pdiag_num", "H"),
              ("pdiag_ino", "I"), ("pdiag_cookie", "Q"))
    nla_map = (("PACKET_DIAG_INFO", "packet_diag_info"), ("PACKET_DIAG_MCLIST", "cdata"),
               ("PACKET_DIAG_RX_RING", "cdata"), ("PACKET_DIAG_TX_RING", "cdata"),
               ("PACKET_DIAG_FANOUT", "uint32"), ("PACKET_DIAG_UID", "uint32"),
               ("PACKET_DIAG_MEMINFO", "hex"), ("PACKET_DIAG_FILTER", "cdata"))

    class packet_diag_info(nla):
        fields = (("pdi_index", "I"), ("pdi_version", "I"), ("pdi_reserve", "I"),
                  ("pdi_copy_thresh", "I"), ("pdi_tstamp", "I"), ("pdi_flags", "I"))


def packet_sockets(diag: socket.socket) -> dict[int, dict]:
    """socket inode -> its facts, for every packet socket in the namespace of
    `diag` (a NETLINK_SOCK_DIAG socket)."""
    from plugins.sk_netlink.socks import diag_dump
    req = packet_diag_req()
    req["sdiag_family"] = socket.AF_PACKET
    req["pdiag_show"] = (PACKET_SHOW_INFO | PACKET_SHOW_MCLIST | PACKET_SHOW_RING_CFG
                         | PACKET_SHOW_FANOUT)
    out = {}
    for m in diag_dump(diag, req, packet_diag_msg):
        info = m.get_attr("PACKET_DIAG_INFO")
        raw = m.get_attr("PACKET_DIAG_MCLIST") or b""
        mclist = [MCLIST.unpack_from(raw, off) for off in range(0, len(raw), MCLIST.size)]
        out[m["pdiag_ino"]] = {
            "type": m["pdiag_type"], "protocol": m["pdiag_num"],
            "ifindex": info["pdi_index"], "version": info["pdi_version"],
            "reserve": info["pdi_reserve"], "copy_thresh": info["pdi_copy_thresh"],
            "timestamp": info["pdi_tstamp"], "flags": info["pdi_flags"],
            # (ifindex, count, type, address)
            "mclist": [(i, count, kind, addr[:alen]) for i, count, kind, alen, addr in mclist],
            "rx_ring": _ring(m.get_attr("PACKET_DIAG_RX_RING")),
            "tx_ring": _ring(m.get_attr("PACKET_DIAG_TX_RING")),
            "fanout": m.get_attr("PACKET_DIAG_FANOUT")}
    return out


def _ring(raw: bytes | None) -> dict | None:
    if not raw:
        return None
    return dict(zip(RING, struct.unpack_from("7I", raw)))
