"""/proc readers the tracer's dump and the restore plugins share.

Plain text parsing, no ptrace: loaded by whoever reads a task's status
(the dump's credentials, a restore checking what a forked task already
holds) without the dump's other machinery.
"""
from __future__ import annotations

from engine.tracer import model as m


def proc_status(pid: int | str) -> dict[str, list[str]]:
    """/proc/PID/status as name -> its values."""
    with open(f"/proc/{pid}/status") as f:
        return {k: v.split() for k, _, v in (line.partition(":") for line in f)}


def creds_from_status(status: dict[str, list[str]], secbits: int) -> m.Creds:
    """The credentials /proc/PID/status shows; securebits are not there."""
    uid = [int(x) for x in status["Uid"]]
    gid = [int(x) for x in status["Gid"]]

    def caps(key):
        v = int(status[key][0], 16)
        return [v & 0xFFFFFFFF, v >> 32]
    return m.Creds(uid=uid[0], euid=uid[1], suid=uid[2], fsuid=uid[3],
                   gid=gid[0], egid=gid[1], sgid=gid[2], fsgid=gid[3],
                   cap_inh=caps("CapInh"), cap_prm=caps("CapPrm"), cap_eff=caps("CapEff"),
                   cap_bnd=caps("CapBnd"), cap_amb=caps("CapAmb"), secbits=secbits,
                   groups=[int(g) for g in status.get("Groups", [])])
