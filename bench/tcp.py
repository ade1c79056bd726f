"""Dump and restore of a process with 100 established loopback TCP
connections, each with 64 KiB queued, then the same with empty queues, then
the listener alone (median of N each), so the cost per connection and per
queued byte can be read.

Run as root from the repo: `.venv/bin/python bench/tcp.py [-n 5] [--conns 100]`.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import become_subreaper, build, one_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--conns", type=int, default=100)
    opts = ap.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        exe = build("tcpmany", work)
        for label, conns, queued in ((f"{opts.conns} conns x 64 KiB queued", opts.conns, 65536),
                                     (f"{opts.conns} conns, empty queues ", opts.conns, 0),
                                     ("listener only (baseline)  ", 0, 0)):
            runs = [one_run(exe, ["--conns", str(conns), "--bytes", str(queued)], work)
                    for _ in range(opts.n)]
            dump = statistics.median(r[0] for r in runs)
            restore = statistics.median(r[1] for r in runs)
            print(f"{label}  dump {dump * 1000:8.1f} ms   restore {restore * 1000:8.1f} ms"
                  f"   (median of {opts.n})")


if __name__ == "__main__":
    main()
