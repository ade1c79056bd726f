"""netlink_diag (linux/netlink_diag.h) as pyroute2 messages, and its dump."""
from __future__ import annotations

import socket
import struct

from pyroute2.netlink import nlmsg


class netlink_diag_req(nlmsg):
    fields = (("sdiag_family", "B"), ("sdiag_protocol", "B"), ("__pad", "H"),
              ("ndiag_ino", "I"), ("ndiag_show", "I"), ("ndiag_cookie", "Q"))


class netlink_diag_msg(nlmsg):
    fields = (("ndiag_family", "B"), ("ndiag_type", "B"), ("ndiag_protocol", "B"),
              ("ndiag_state", "B"), ("ndiag_portid", "I"), ("ndiag_dst_portid", "I"),
              ("ndiag_dst_group", "I"), ("ndiag_ino", "I"), ("ndiag_cookie", "Q"))
    nla_map = (("NETLINK_DIAG_MEMINFO", "hex"), ("NETLINK_DIAG_GROUPS", "cdata"),
               ("NETLINK_DIAG_RX_RING", "hex"), ("NETLINK_DIAG_TX_RING", "hex"),
               ("NETLINK_DIAG_FLAGS", "uint32"))


def netlink_sockets(diag: socket.socket) -> dict[int, dict]:
    """socket inode -> its facts, for every netlink socket bound or listening
    to groups in the namespace of `diag` (a NETLINK_SOCK_DIAG socket)."""
    from plugins.sk_netlink import NDIAG_PROTO_ALL, NDIAG_SHOW_FLAGS, NDIAG_SHOW_GROUPS
    from plugins.sk_netlink.socks import diag_dump
    req = netlink_diag_req()
    req["sdiag_family"], req["sdiag_protocol"] = socket.AF_NETLINK, NDIAG_PROTO_ALL
    req["ndiag_show"] = NDIAG_SHOW_GROUPS | NDIAG_SHOW_FLAGS
    out = {}
    # A socket shows twice when it is both bound and listening: same facts.
    for m in diag_dump(diag, req, netlink_diag_msg):
        raw = m.get_attr("NETLINK_DIAG_GROUPS") or b""
        # unsigned longs, little-endian: the same bits as u32 words; CRIU
        # drops the empty words at the end, so does this
        groups = list(struct.unpack(f"<{len(raw) // 4}I", raw[:len(raw) // 4 * 4]))
        while groups and not groups[-1]:
            groups.pop()
        out[m["ndiag_ino"]] = {"protocol": m["ndiag_protocol"], "state": m["ndiag_state"],
                               "portid": m["ndiag_portid"],
                               "dst_portid": m["ndiag_dst_portid"],
                               "dst_group": m["ndiag_dst_group"], "groups": groups,
                               "flags": m.get_attr("NETLINK_DIAG_FLAGS") or 0}
    return out
