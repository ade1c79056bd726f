"""Restore time of a 50-process tree and of a 50-thread process.

Run as root from the repo: `.venv/bin/python bench/tree_threads.py [-n 5]`.
Whole `engine restore` commands, median of N; each run dumps a fresh tree.
The engine's start-up (`engine plugins`: interpreter, imports, plugin set)
is measured too and taken off, to show what the restore itself costs.

`--against DIR` compares this checkout with another one (say, a `git
worktree add DIR REV` of an older commit): one dump of each case, then N
restores from each checkout in turn, A B B A A B..., each tree killed and
reaped before the next. It prints the medians of both, their CPU (engine,
tracers and every task), and the median of the N per-pair ratios, which
holds when the machine's speed drifts, as it does here by 20% and more
within minutes.
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
from dump_restore import TARGETS, become_subreaper, engine, import_floor, wait_for  # noqa: E402

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


def dumped(cmd: list[str], ready: Path, img: Path) -> int:
    """Start the target, dump it to `img` (which kills it) and reap it;
    returns its root pid, the session the restored tree will have."""
    ready.unlink(missing_ok=True)
    subprocess.run(["rm", "-rf", str(img)], check=True)
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            start_new_session=True)
    wait_for(ready)
    engine("dump", "-t", str(proc.pid), "-D", str(img))
    reap_all()
    return proc.pid


def one(cmd: list[str], ready: Path, img: Path) -> float:
    root = dumped(cmd, ready, img)
    took = engine("restore", "-D", str(img))
    time.sleep(0.05)
    kill_tree(root)
    return took


def restore_from(checkout: Path | None, img: Path, root: int) -> tuple[float, float]:
    """Wall and CPU seconds of one `engine restore` run from `checkout`
    (None: this one), the restored tree killed and reaped after it so that
    its tasks' CPU is counted."""
    env, cwd = dict(os.environ), None
    if checkout is not None:
        env["PYTHONPATH"], cwd = str(checkout), checkout
    before = os.times()
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "engine", "restore", "-D", str(img)], check=True,
                   stdout=subprocess.DEVNULL, cwd=cwd, env=env)
    wall = time.perf_counter() - t
    kill_tree(root)
    after = os.times()
    return wall, (after.children_user + after.children_system
                  - before.children_user - before.children_system)


def paired(cmd: list[str], ready: Path, img: Path, against: Path, n: int) -> dict:
    root = dumped(cmd, ready, img)
    runs: dict = {"this": [], "against": []}
    for i in range(n):
        for side in (("this", "against") if i % 2 == 0 else ("against", "this")):
            runs[side].append(restore_from(None if side == "this" else against, img, root))
    return runs


def compare(opts, cases: dict, work: Path) -> None:
    against = opts.against.resolve()
    # Its byte-code, as setup.sh does for this checkout: else it would be
    # compiled again in every run (PYTHONDONTWRITEBYTECODE).
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(against / "engine"),
                    str(against / "plugins")], check=True, stdout=subprocess.DEVNULL, env=env)
    print(f"this checkout against {against}: {opts.n} restores of each, in turn, of one dump")
    for name, cmd in cases.items():
        runs = paired(cmd, work / "ready", work / "img", against, opts.n)
        this = statistics.median(w for w, _ in runs["this"])
        other = statistics.median(w for w, _ in runs["against"])
        cpu_this = statistics.median(c for _, c in runs["this"])
        cpu_other = statistics.median(c for _, c in runs["against"])
        ratio = statistics.median(a[0] / b[0] for a, b in zip(runs["this"], runs["against"]))
        print(f"{name:18s} restore {this * 1000:8.1f} ms (cpu {cpu_this * 1000:.0f}) against "
              f"{other * 1000:8.1f} ms (cpu {cpu_other * 1000:.0f}): ratio {ratio:.3f} "
              f"(median of {opts.n} pairs)")


def _cases(work: Path) -> dict[str, list[str]]:
    """The two targets, built in `work`: name -> command line."""
    (work / "fanout.c").write_text(FANOUT)
    subprocess.run(["gcc", "-O2", "-o", str(work / "fanout"), str(work / "fanout.c")],
                   check=True)
    subprocess.run(["gcc", "-O2", "-pthread", "-o", str(work / "threads"),
                    str(TARGETS / "threads.c")], check=True)
    ready = work / "ready"
    return {
        "50-process tree": [str(work / "fanout"), str(ready)],
        "50-thread process": [str(work / "threads"), "--ready", str(ready),
                              "--result", str(work / "result"), "--threads", "48"],
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-n", type=int, default=5)
    ap.add_argument("--against", type=Path, metavar="DIR",
                    help="another checkout of the engine to compare with, run for run")
    opts = ap.parse_args()
    become_subreaper()
    if opts.against is not None:
        with tempfile.TemporaryDirectory() as d:
            compare(opts, _cases(Path(d)), Path(d))
        return
    floor = import_floor(opts.n)
    print(f"{'import floor':18s}         {floor * 1000:8.1f} ms (python + pluggy, attrs, "
          f"protobuf; median of {opts.n})")
    startup = statistics.median(engine("plugins") for _ in range(opts.n))
    print(f"{'engine startup':18s}         {startup * 1000:8.1f} ms (median of {opts.n})")
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for name, cmd in _cases(work).items():
            runs = [one(cmd, work / "ready", work / "img") for _ in range(opts.n)]
            took = statistics.median(runs)
            print(f"{name:18s} restore {took * 1000:8.1f} ms "
                  f"({(took - startup) * 1000:.1f} ms past startup; median of {opts.n})")


if __name__ == "__main__":
    main()
