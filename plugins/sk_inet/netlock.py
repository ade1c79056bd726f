"""The network lock: packets of dumped TCP connections are dropped.

CRIU's per-connection nftables lock (criu/netfilter.c): while a connection
is dumped and until it is restored, nothing reaches either end, so neither
kernel answers a half-dead socket with a RST. One table of our own,
``inet engine_netlock``, holds two sets of 4-tuples (v4, v6) and one drop
rule per set and direction; locking adds a connection's tuples in both
directions, unlocking deletes them. Every call is one atomic ``nft -f``
batch that first (re)declares the table, so locking is idempotent and
unlocking never fails on a tuple that is not there (it is added, then
deleted, in the same batch). v4-mapped v6 addresses travel as IPv4, so they
go in the v4 set.
"""
from __future__ import annotations

import ipaddress

TABLE = "engine_netlock"
PRELUDE = f"""add table inet {TABLE}
add set inet {TABLE} conn4 {{ type ipv4_addr . inet_service . ipv4_addr . inet_service; }}
add set inet {TABLE} conn6 {{ type ipv6_addr . inet_service . ipv6_addr . inet_service; }}
add chain inet {TABLE} input {{ type filter hook input priority -300; }}
add chain inet {TABLE} output {{ type filter hook output priority -300; }}
flush chain inet {TABLE} input
flush chain inet {TABLE} output
"""
RULES = "".join(
    f"add rule inet {TABLE} {chain} {ip} saddr . tcp sport . {ip} daddr . tcp dport "
    f"@conn{v} drop\n"
    for chain in ("input", "output") for ip, v in (("ip", 4), ("ip6", 6)))

# A connection: (local address, local port, remote address, remote port).
Conn = tuple[str, int, str, int]


class NetlockError(Exception):
    """nft refused the lock or unlock: one line with nft's own message."""


def lock(conns: list[Conn]) -> None:
    if conns:
        _nft(PRELUDE + RULES + _elements("add", conns))


def unlock(conns: list[Conn]) -> None:
    if conns:
        _nft(PRELUDE + RULES + _elements("add", conns) + _elements("delete", conns))


def locked() -> set[Conn]:
    """The tuples in the lock now (tests and `engine check`)."""
    out = set()
    for v in (4, 6):
        proc = _subprocess().run(["nft", "list", "set", "inet", TABLE, f"conn{v}"],
                              capture_output=True, text=True)
        if proc.returncode:
            continue
        body = proc.stdout.partition("elements = {")[2].partition("}")[0]
        for item in filter(None, (x.strip() for x in body.replace("\n", " ").split(","))):
            a, ap, b, bp = (p.strip() for p in item.split(" . "))
            out.add((a, int(ap), b, int(bp)))
    return out


def _elements(verb: str, conns: list[Conn]) -> str:
    # Both ends of a loopback connection give the same two tuples: once each
    # (nft refuses to delete one element twice in a batch).
    sets: dict[int, dict[str, None]] = {4: {}, 6: {}}
    for local, lport, remote, rport in conns:
        v, local, remote = _family(local, remote)
        sets[v][f"{local} . {lport} . {remote} . {rport}"] = None
        sets[v][f"{remote} . {rport} . {local} . {lport}"] = None
    return "".join(f"{verb} element inet {TABLE} conn{v} {{ {', '.join(items)} }}\n"
                   for v, items in sets.items() if items)


def _family(local: str, remote: str) -> tuple[int, str, str]:
    a, b = ipaddress.ip_address(local), ipaddress.ip_address(remote)
    if a.version == 6 and a.ipv4_mapped and b.ipv4_mapped:
        return 4, str(a.ipv4_mapped), str(b.ipv4_mapped)
    return a.version, str(a), str(b)


def _nft(script: str) -> None:
    try:
        proc = _subprocess().run(["nft", "-f", "-"], input=script, capture_output=True, text=True)
    except FileNotFoundError:
        raise NetlockError("network lock: the nft tool is not installed") from None
    if proc.returncode:
        msg = " ".join(proc.stderr.split()) or f"exit status {proc.returncode}"
        raise NetlockError(f"network lock: nft: {msg}")


def _subprocess():
    import subprocess           # only when run: ~2 ms of every command's start
    return subprocess
