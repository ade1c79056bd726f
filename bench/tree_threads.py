"""Restore time of a 50-process tree and of a 50-thread process.

Run as root from the repo: `.venv/bin/python bench/tree_threads.py [-n 5]`.
Whole `engine restore` commands, median of N; each run dumps a fresh tree.
The engine's start-up (`engine plugins`: interpreter, imports, plugin set)
is measured too and taken off, to show what the restore itself costs.
"""
from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import TARGETS, engine, import_floor, wait_for  # noqa: E402

FANOUT = r"""
#include <signal.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int n = 49;
	for (int i = 0; i < n; i++)
		if (fork() == 0)
			for (;;) pause();
	FILE *f = fopen(argv[1], "w");
	fputs("ready\n", f);
	fclose(f);
	for (;;) pause();
}
"""


def reap_all() -> None:
    while True:
        try:
            os.waitpid(-1, 0)
        except ChildProcessError:
            return


def kill_tree(root: int) -> None:
    subprocess.run(["pkill", "-KILL", "-s", str(root)], check=False)
    reap_all()


def one(cmd: list[str], ready: Path, img: Path) -> float:
    ready.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(img)], check=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(ready)
    engine("dump", "-t", str(proc.pid), "-D", str(img))
    reap_all()
    took = engine("restore", "-D", str(img))
    time.sleep(0.05)
    kill_tree(proc.pid)
    return took


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    opts = ap.parse_args()
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    floor = import_floor(opts.n)
    print(f"{'import floor':18s}         {floor * 1000:8.1f} ms (python + pluggy, attrs, "
          f"protobuf; median of {opts.n})")
    startup = statistics.median(engine("plugins") for _ in range(opts.n))
    print(f"{'engine startup':18s}         {startup * 1000:8.1f} ms (median of {opts.n})")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "fanout.c").write_text(FANOUT)
        subprocess.run(["gcc", "-O2", "-o", str(work / "fanout"), str(work / "fanout.c")],
                       check=True)
        subprocess.run(["gcc", "-O2", "-pthread", "-o", str(work / "threads"),
                        str(TARGETS / "threads.c")], check=True)
        ready = work / "ready"
        cases = {
            "50-process tree": [str(work / "fanout"), str(ready)],
            "50-thread process": [str(work / "threads"), "--ready", str(ready),
                                  "--result", str(work / "result"), "--threads", "48"],
        }
        for name, cmd in cases.items():
            runs = [one(cmd, ready, work / "img") for _ in range(opts.n)]
            took = statistics.median(runs)
            print(f"{name:18s} restore {took * 1000:8.1f} ms "
                  f"({(took - startup) * 1000:.1f} ms past startup; median of {opts.n})")


if __name__ == "__main__":
    main()
