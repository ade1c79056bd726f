"""What the state audit costs: `engine restore --verify` against a plain
restore of the same dump, for a counter and a touched buffer.

Run as root from the repo: `.venv/bin/python bench/verify.py [-n 5] [--mib 256]`.
One dump of each target; then N restores with --verify and N without, in
turn (A B B A ...), each restored tree killed and reaped before the next.
Prints both medians, the median per-pair ratio, and the audit's cost per
GiB of touched memory. (The dump's fingerprint is part of every dump.)
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import become_subreaper, build, engine, wait_for  # noqa: E402


def dumped(exe: Path, args: list[str], work: Path) -> tuple[int, Path]:
    ready, img = work / f"{exe.name}.ready", work / f"{exe.name}.img"
    proc = subprocess.Popen([str(exe), "--ready", str(ready), "--result", str(work / "r"),
                             *args], stdin=subprocess.DEVNULL)
    wait_for(ready)
    engine("dump", "-t", str(proc.pid), "-D", str(img))
    proc.wait()
    return proc.pid, img


def restore_once(pid: int, img: Path, verify: bool) -> float:
    took = engine("restore", "-D", str(img), *(["--verify"] if verify else []))
    os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            break
    while os.path.exists(f"/proc/{pid}"):
        time.sleep(0.001)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--mib", type=int, default=256)
    opts = ap.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        cases = [("counter", build("counter", work), [], 0),
                 (f"bigmem {opts.mib} MiB", build("bigmem", work), ["--mib", str(opts.mib)],
                  opts.mib)]
        for name, exe, args, mib in cases:
            pid, img = dumped(exe, args, work)
            runs = {True: [], False: []}
            for i in range(opts.n):
                for verify in ((True, False) if i % 2 == 0 else (False, True)):
                    runs[verify].append(restore_once(pid, img, verify))
            a, b = statistics.median(runs[True]), statistics.median(runs[False])
            ratio = statistics.median(x / y for x, y in zip(runs[True], runs[False]))
            line = (f"{name:18s} restore --verify {a * 1000:8.1f} ms   plain {b * 1000:8.1f} ms"
                    f"   ratio {ratio:.3f} (median of {opts.n} pairs)")
            if mib:
                line += f"   audit {(a - b) * 1024 / mib:.2f} s per GiB"
            print(line)


if __name__ == "__main__":
    main()
