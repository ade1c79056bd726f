"""Dump and restore of a process holding 1000 open fds (median of N).

Run as root from the repo: `.venv/bin/python bench/fds.py [-n 5]`.

Three cases, each a fresh process per run, dumped then restored (whole
`engine` commands, interpreter start included):
  none     the same program with no extra fds: the fixed cost to subtract
  files    1000 opens of one file (1000 open files on one inode: the dump's
           worst case for telling shared open files apart)
  mixed    500 pipes (1000 fds, a byte in each) and nothing else
The restored process is checked to hold every fd (count of /proc/PID/fd).
The import floor (an interpreter importing only the mandated libraries)
is printed first: no whole `engine restore` can take less.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from dump_restore import become_subreaper, engine, import_floor, wait_for  # noqa: E402
from tree_threads import kill_tree, reap_all  # noqa: E402

MANY_FDS = r"""
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv)
{
	int n = atoi(argv[3]), p[2];

	for (int i = 0; i < n; i++) {
		if (!strcmp(argv[4], "pipes")) {
			if (pipe(p) || write(p[1], "x", 1) != 1)
				return 1;
			i++;
		} else if (open(argv[1], O_RDONLY) < 0) {
			return 1;
		}
	}
	FILE *f = fopen(argv[2], "w");
	fputs("ready\n", f);
	fclose(f);
	for (;;)
		pause();
}
"""
CASES = {"none": (0, "files"), "files": (1000, "files"), "mixed": (1000, "pipes")}


def one_case(work: Path, count: int, kind: str, runs: int) -> tuple[float, float]:
    dumps, restores = [], []
    for _ in range(runs):
        ready = work / "ready"
        ready.unlink(missing_ok=True)
        subprocess.run(["rm", "-rf", str(work / "img")], check=True)
        proc = subprocess.Popen([str(work / "fds"), str(work / "data"), str(ready), str(count),
                                 kind], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        wait_for(ready)
        before = len(os.listdir(f"/proc/{proc.pid}/fd"))
        dumps.append(engine("dump", "-t", str(proc.pid), "-D", str(work / "img")))
        reap_all()
        restores.append(engine("restore", "-D", str(work / "img")))
        after = len(os.listdir(f"/proc/{proc.pid}/fd"))
        kill_tree(proc.pid)
        time.sleep(0.05)
        if after != before:
            raise SystemExit(f"restored process holds {after} fds, had {before}")
    return statistics.median(dumps), statistics.median(restores)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    opts = ap.parse_args()
    become_subreaper()
    print(f"import floor (python + pluggy, attrs, protobuf) {import_floor(opts.n) * 1000:7.1f} ms"
          f"   (median of {opts.n})")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        (work / "fds.c").write_text(MANY_FDS)
        (work / "data").write_text("x" * 100)
        subprocess.run(["gcc", "-O2", "-o", str(work / "fds"), str(work / "fds.c")], check=True)
        base = None
        for name, (count, kind) in CASES.items():
            dump, restore = one_case(work, count, kind, opts.n)
            line = f"{name:6s} {count:4d} fds   dump {dump * 1000:7.1f} ms   restore {restore * 1000:7.1f} ms"
            if base is None:
                base = (dump, restore)
            else:
                line += (f"   (past no fds: dump {(dump - base[0]) * 1000:+.1f} ms, "
                         f"restore {(restore - base[1]) * 1000:+.1f} ms)")
            print(line + f"   (median of {opts.n})")


if __name__ == "__main__":
    main()
