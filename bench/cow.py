"""Copy-on-write pages across a dump and a restore: memory and time.

Run as root from the repo: `.venv/bin/python bench/cow.py [-n 3] [--mib 64] [--kids 4]`.
A parent touches MIB MiB and forks KIDS children that never write them
(tests/targets/cowtree.c). Prints, median of N runs: the children's summed
Private_Dirty (smaps_rollup) before the dump and after the restore, the
image's pages bytes, and the dump and restore times. While the pages stay
shared the children's Private_Dirty stays small; a restore that gives each
child private copies adds about MIB MiB per child.
"""
from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import tempfile
from pathlib import Path

from dump_restore import _reap, become_subreaper, build, engine, wait_for


def private_dirty_kib(pids) -> int:
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Private_Dirty:"):
                    total += int(line.split()[1])
    return total


def one_run(exe: Path, args: list[str], work: Path) -> dict:
    import shutil
    ready, result, img = work / "ready", work / "result", work / "img"
    for p in (ready, result):
        p.unlink(missing_ok=True)
    shutil.rmtree(img, ignore_errors=True)
    proc = subprocess.Popen([str(exe), "--ready", str(ready), "--result", str(result), *args],
                            stdin=subprocess.DEVNULL)
    wait_for(ready)
    kids = [int(pid) for line in ready.read_text().split() if line.startswith("kids=")
            for pid in line[5:].split(",")]
    before = private_dirty_kib(kids)
    t_dump = engine("dump", "-t", str(proc.pid), "-D", str(img))
    proc.wait()
    for kid in kids:          # killed by the dump, reparented to us
        os.waitpid(kid, 0)
    pages = sum(p.stat().st_size for p in img.glob("pages-*.img"))
    t_restore = engine("restore", "-D", str(img))
    after = private_dirty_kib(kids)
    os.kill(proc.pid, signal.SIGTERM)
    wait_for(result)
    verdict = result.read_text().strip()
    if verdict != "PASS":
        raise SystemExit(f"cowtree: {verdict}")
    _reap()
    return dict(before=before, after=after, pages=pages, dump=t_dump, restore=t_restore)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=3)
    ap.add_argument("--mib", type=int, default=64)
    ap.add_argument("--kids", type=int, default=4)
    opts = ap.parse_args()
    become_subreaper()
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        exe = build("cowtree", work)
        runs = [one_run(exe, ["--mib", str(opts.mib), "--kids", str(opts.kids)], work)
                for _ in range(opts.n)]

    def med(key):
        return statistics.median(r[key] for r in runs)
    print(f"cowtree {opts.mib} MiB x {opts.kids} kids: children's Private_Dirty "
          f"{med('before') / 1024:.1f} MiB before dump, {med('after') / 1024:.1f} MiB after "
          f"restore; pages images {med('pages') / 2**20:.1f} MiB; dump {med('dump') * 1000:.0f} ms, "
          f"restore {med('restore') * 1000:.0f} ms (median of {opts.n})")


if __name__ == "__main__":
    main()
