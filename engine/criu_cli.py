"""The `criu` command the package installs: CRIU's command line for what
container runtimes run (swrk, service, dump, restore, check, --version),
served by the engine, so a runtime given this `criu` (first on PATH, or
`runc --criu PATH`) checkpoints and restores with the engine.

Flags are mapped to the engine's; any other flag is refused by name, never
passed over. Without -d, restore waits for the restored root and exits with
its status, as CRIU does.
"""
from __future__ import annotations

import argparse
import os
import sys

PROG = "criu"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, add_help=True,
                                description="CRIU's command line, served by the engine")
    p.add_argument("-V", "--version", action="store_true")
    sub = p.add_subparsers(dest="command")
    w = sub.add_parser("swrk")
    w.add_argument("fd", type=int)
    s = sub.add_parser("service")
    s.add_argument("--address", required=True)
    sub.add_parser("check")
    for name in ("dump", "restore"):
        c = sub.add_parser(name)
        c.add_argument("-D", "--images-dir", required=True)
        c.add_argument("-W", "--work-dir")
        c.add_argument("-o", "--log-file")
        c.add_argument("-v", dest="verbosity", nargs="?", const="v", default="2")
        c.add_argument("--shell-job", "-j", action="store_true")
        c.add_argument("--tcp-established", action="store_true")
        c.add_argument("--ext-unix-sk", action="store_true")
        c.add_argument("--file-locks", "-l", action="store_true")
        c.add_argument("--external", action="append", default=[])
        c.add_argument("--root")
        if name == "dump":
            c.add_argument("-t", "--tree", type=int, required=True)
            c.add_argument("-R", "--leave-running", action="store_true")
            c.add_argument("--ghost-limit")
        else:
            c.add_argument("-d", "--restore-detached", action="store_true")
            c.add_argument("--pidfile")
            c.add_argument("--leave-stopped", action="store_true")
            c.add_argument("--restore-sibling", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args, unknown = _parser().parse_known_args(argv)
    if unknown:
        print(f"{PROG}: not supported by the engine's criu: {' '.join(unknown)}", file=sys.stderr)
        return 1
    if args.version:
        from engine.rpc import criu_version_text
        print(f"Version: {criu_version_text()}")
        return 0
    if args.command is None:
        print(f"{PROG}: a command is needed (swrk, service, dump, restore, check)",
              file=sys.stderr)
        return 1
    from engine import cli
    if args.command == "swrk":
        return cli.main(["swrk", str(args.fd)])
    if args.command == "service":
        return cli.main(["service", "--address", args.address])
    if args.command == "check":
        code = cli.main(["check"])
        if code == 0:
            print("Looks good.")
        return code
    return _dump_or_restore(args)


def _dump_or_restore(args) -> int:
    import logging
    from engine import cli
    from engine.rpc.requests import log_to
    level = _level(args.verbosity)
    argv = [args.command, "-D", args.images_dir]
    if args.ext_unix_sk:
        argv.append("--ext-unix-sk")
    # plugins/mntns: external mounts and the root of a dumped mount tree.
    argv += [a for item in args.external for a in ("--external", item)]
    argv += ["--root", args.root] if args.root else []
    # --shell-job, --tcp-established, --file-locks: what the engine always
    # does (a session outside the tree is inherited; established TCP and
    # file locks are dumped and restored).
    if args.command == "dump":
        argv += ["-t", str(args.tree)] + (["--leave-running"] if args.leave_running else [])
        if args.ghost_limit is not None:
            argv += ["--ghost-limit", args.ghost_limit]
    else:
        pidfile = args.pidfile or os.path.join(args.work_dir or args.images_dir,
                                               ".engine-criu-restore.pid")
        argv += ["--pidfile", pidfile] + (["--leave-stopped"] if args.leave_stopped else [])
    handler = None
    if args.log_file:
        handler = log_to(args.work_dir or args.images_dir, args.log_file, level)
    else:
        logging.basicConfig(level=logging.WARNING, format="engine: %(name)s: %(message)s")
    try:
        code = cli.main(argv)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
    if code or args.command == "dump" or args.restore_detached:
        return code
    return _wait_root(pidfile, args.pidfile is None)


def _wait_root(pidfile: str, scratch: bool) -> int:
    """CRIU without -d stays the restored root's parent until it exits."""
    with open(pidfile) as f:
        root = int(f.read())
    if scratch:
        os.unlink(pidfile)
    try:
        _, status = os.waitpid(root, 0)
    except ChildProcessError:
        # Forked by a helper of the restore, not by us: wait until it is
        # gone; its status is its parent's to read.
        import select
        with _pidfd(root) as fd:
            select.select([fd], [], [])
        return 0
    return os.waitstatus_to_exitcode(status) & 0xff


class _pidfd:
    def __init__(self, pid: int):
        self.fd = os.pidfd_open(pid)

    def __enter__(self) -> int:
        return self.fd

    def __exit__(self, *exc) -> None:
        os.close(self.fd)


def _level(verbosity: str) -> int:
    """-v4 is level 4, -vvv is 3 (-v alone: 1 more than the default 2)."""
    if verbosity.isdigit():
        return int(verbosity)
    return 2 + verbosity.count("v")


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
