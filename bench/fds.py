"""Dump and restore of a process holding 1000 open files (median of N).

Run as root from the repo: `.venv/bin/python bench/fds.py [-n 5]`.
"""
from __future__ import annotations

import argparse
import ctypes
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import engine, wait_for  # noqa: E402
from tree_threads import kill_tree, reap_all  # noqa: E402

MANY_FDS = r"""
#include <fcntl.h>
#include <stdio.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	for (int i = 0; i < 1000; i++)
		if (open(argv[1], O_RDONLY) < 0)
			return 1;
	FILE *f = fopen(argv[2], "w");
	fputs("ready\n", f);
	fclose(f);
	for (;;)
		pause();
}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    opts = ap.parse_args()
    ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "fds.c").write_text(MANY_FDS)
        (work / "data").write_text("x" * 100)
        subprocess.run(["gcc", "-O2", "-o", str(work / "fds"), str(work / "fds.c")], check=True)
        dumps, restores = [], []
        for _ in range(opts.n):
            ready = work / "ready"
            ready.unlink(missing_ok=True)
            subprocess.run(["rm", "-rf", str(work / "img")], check=True)
            proc = subprocess.Popen([str(work / "fds"), str(work / "data"), str(ready)],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL, start_new_session=True)
            wait_for(ready)
            dumps.append(engine("dump", "-t", str(proc.pid), "-D", str(work / "img")))
            reap_all()
            restores.append(engine("restore", "-D", str(work / "img")))
            time.sleep(0.05)
            kill_tree(proc.pid)
        print(f"1000 open files     dump {statistics.median(dumps) * 1000:8.1f} ms   "
              f"restore {statistics.median(restores) * 1000:8.1f} ms   (median of {opts.n})")


if __name__ == "__main__":
    main()
