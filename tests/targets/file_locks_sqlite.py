#!/usr/bin/python3
# engine-target: interpreter=/usr/bin/python3 ;
# what: sqlite3 in WAL mode (Debian's python3 and libsqlite3), the
#       connection held open across the dump: it holds POSIX locks on the
#       database and its -shm file, which keep another process from
#       checkpointing and deleting the -wal and -shm files; on SIGUSR1 it
#       writes a row ("after") and touches `wrote`; on SIGTERM it checks it
#       sees its rows and those another process wrote (listed in the file
#       `expect`, if any), and that -wal and -shm exist
"""DESIGN §6 protocol target: the sqlite WAL case of issue 15.

The test is the other process on the same database (wal.db in the
target's directory): it reads the rows, dumps and restores this one, then
closes its own connection (sqlite then checkpoints and deletes -wal/-shm
unless another connection still holds its locks), sends SIGUSR1 and reads
the row written here, writes a row ("from-test"), lists it in `expect`
and sends SIGTERM.
"""
import os
import signal
import sqlite3
import sys
import time

DB = "wal.db"


def _args():
    args = sys.argv[1:]
    return args[args.index("--ready") + 1], args[args.index("--result") + 1]


def _write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.rename(path + ".tmp", path)


def main():
    ready, result = _args()
    flags = {"usr1": False, "term": False}
    signal.signal(signal.SIGUSR1, lambda *_: flags.update(usr1=True))
    signal.signal(signal.SIGTERM, lambda *_: flags.update(term=True))
    conn = sqlite3.connect(DB, isolation_level=None)
    mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
    if mode != "wal":
        sys.exit(f"journal_mode: {mode}")
    conn.execute("CREATE TABLE t (x TEXT)")
    conn.execute("INSERT INTO t VALUES ('before')")
    _write_atomic(ready, f"ready\ndb={os.path.abspath(DB)}\n")
    want = ["before"]
    while not flags["term"]:
        if flags["usr1"]:
            flags["usr1"] = False
            conn.execute("INSERT INTO t VALUES ('after')")
            want.append("after")
            _write_atomic("wrote", "wrote\n")
        time.sleep(0.01)
    if os.path.exists("expect"):
        with open("expect") as f:
            want += f.read().split()
    rows = sorted(r[0] for r in conn.execute("SELECT x FROM t"))
    if rows != sorted(want):
        verdict = f"FAIL: rows {rows}, want {sorted(want)}"
    elif not (os.path.exists(DB + "-wal") and os.path.exists(DB + "-shm")):
        verdict = "FAIL: the -wal or -shm file is gone"
    else:
        verdict = "PASS"
    conn.close()
    _write_atomic(result, verdict + "\n")


if __name__ == "__main__":
    main()
