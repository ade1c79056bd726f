"""Dump and restore of a process whose unix socket queue holds 4 MiB (median of N).

A stream socketpair (one 4 MiB queue) and a datagram one (64 datagrams of
64 KiB); the target (tests/targets/unixqueue.c) checks every byte after the
restore. The queue needs a send buffer of 4 MiB (doubled by the kernel):
net.core.wmem_max/rmem_max are raised to 16 MiB for the run if lower, and
put back after. Run as root from the repo:
`.venv/bin/python bench/unix_queue.py [-n 5] [--kib 4096]`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import become_subreaper, build, one_run  # noqa: E402

SYSCTLS = ("wmem_max", "rmem_max")
WANT = 16 << 20


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--kib", type=int, default=4096)
    opts = ap.parse_args()
    become_subreaper()
    saved = {k: Path(f"/proc/sys/net/core/{k}").read_text() for k in SYSCTLS}
    try:
        for k in SYSCTLS:
            if int(saved[k]) < WANT:
                Path(f"/proc/sys/net/core/{k}").write_text(str(WANT))
        with tempfile.TemporaryDirectory() as d:
            work = Path(d)
            exe = build("unixqueue", work)
            for kind, extra in (("stream", []), ("dgram", ["--dgram"])):
                dumps, restores = [], []
                for _ in range(opts.n):
                    t_dump, t_restore = one_run(exe, ["--kib", str(opts.kib), *extra], work)
                    dumps.append(t_dump)
                    restores.append(t_restore)
                print(f"unix {kind:6s} queue of {opts.kib} KiB   dump "
                      f"{statistics.median(dumps) * 1000:8.1f} ms   restore "
                      f"{statistics.median(restores) * 1000:8.1f} ms   (median of {opts.n})")
    finally:
        for k, v in saved.items():
            Path(f"/proc/sys/net/core/{k}").write_text(v)


if __name__ == "__main__":
    main()
