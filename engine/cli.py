"""The `engine` command: dump, restore, show, plan, plugins, check, swrk, service.

Every failure ends as one line on stderr and a non-zero exit. Imports are
lazy: the interpreter start is most of a small run.
"""
from __future__ import annotations

import argparse
import gc
import logging
import os
import sys

EXIT_FAILED = 1


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--plugins", default="default",
                   help="comma-separated plugin set: 'default' and/or plugin names")
    p.add_argument("--disable", action="append", default=[], metavar="NAME",
                   help="disable a plugin (repeatable, or comma-separated)")
    p.add_argument("-v", "--verbose", action="count", default=0)


class _Formatter(argparse.HelpFormatter):
    """argparse's own, sized without shutil. Every add_argument makes one,
    and HelpFormatter imports shutil for the terminal's width, and with it
    zlib, bz2 and lzma: ~2 ms of every command, and five more shared
    libraries (25 mappings) that every task a restore forks copies at fork
    and unmaps again before its memory comes in."""

    def __init__(self, prog, indent_increment=2, max_help_position=24, width=None):
        if width is None:
            width = _columns() - 2          # as HelpFormatter does
        super().__init__(prog, indent_increment, max_help_position, width)


def _columns() -> int:
    """shutil.get_terminal_size().columns: $COLUMNS, else stdout's
    terminal, else 80."""
    try:
        columns = int(os.environ.get("COLUMNS", 0))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _parser(only: str | None = None) -> argparse.ArgumentParser:
    """The command line; with `only`, that subcommand alone (the one given:
    building the other five costs a few ms of every run)."""
    p = argparse.ArgumentParser(prog="engine", description=__doc__.splitlines()[0],
                                formatter_class=_Formatter)
    p.add_argument("--version", action=_Version, help="print the engine's version and the "
                   "CRIU version whose behaviour it offers, and exit")
    sub = p.add_subparsers(dest="command", required=True)
    p.subcommands = {}               # name -> its parser (for plugin options)
    for name, (text, add_arguments) in _SUBCOMMANDS.items():
        if only is None or name == only:
            p.subcommands[name] = sub.add_parser(name, help=text, formatter_class=_Formatter)
            add_arguments(p.subcommands[name])
    return p


def _dump_arguments(d: argparse.ArgumentParser) -> None:
    d.add_argument("-t", "--tree", type=int, required=True, metavar="PID")
    d.add_argument("-D", "--images-dir", required=True, metavar="DIR")
    d.add_argument("--leave-running", action="store_true",
                   help="resume the tree after the dump instead of killing it")
    d.add_argument("--freeze-cgroup", metavar="PATH",
                   help="freeze the tree through this cgroup (v2 cgroup.freeze, v1 "
                        "freezer.state) before seizing it, then thaw it")
    d.add_argument("--leave-stopped", action="store_true",
                   help="with --freeze-cgroup: leave the tree frozen there after the dump")
    _common(d)


def _restore_arguments(r: argparse.ArgumentParser) -> None:
    r.add_argument("-D", "--images-dir", required=True, metavar="DIR")
    r.add_argument("--verify", action="store_true",
                   help="check the restored tree against the dump's fingerprint before "
                        "letting it run; refuse it on any difference")
    r.add_argument("--leave-stopped", action="store_true",
                   help="leave every task stopped (SIGSTOP) after restore")
    r.add_argument("--pidfile", metavar="FILE",
                   help="write the root's pid here (the host's, as /proc names it, also "
                        "for the init of its own pid namespace)")
    r.add_argument("--rootless", action="store_true",
                   help="restore as an ordinary user, inside a new user and pid namespace")
    _common(r)


def _show_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("dir", metavar="DIR")
    _common(s)


def _plan_arguments(pl: argparse.ArgumentParser) -> None:
    pl.add_argument("-D", "--images-dir", required=True, metavar="DIR")
    pl.add_argument("--tree", action="store_true", help="also print what each node waits for")
    _common(pl)


def _no_arguments(c: argparse.ArgumentParser) -> None:
    pass


def _swrk_arguments(w: argparse.ArgumentParser) -> None:
    w.add_argument("fd", type=int, metavar="FD",
                   help="the inherited end of a SOCK_SEQPACKET socketpair (runc gives 3)")
    w.add_argument("-v", "--verbose", action="count", default=0)


def _service_arguments(sv: argparse.ArgumentParser) -> None:
    sv.add_argument("--address", required=True, metavar="PATH",
                    help="the unix socket to listen at")
    sv.add_argument("-v", "--verbose", action="count", default=0)


class _Version(argparse.Action):
    def __init__(self, option_strings, dest, **kw):
        super().__init__(option_strings, dest, nargs=0, **kw)

    def __call__(self, parser, namespace, values, option_string=None):
        import engine
        from engine.rpc import criu_version_text
        print(f"engine {engine.__version__}\n"
              f"offers CRIU {criu_version_text()}'s RPC, command line and images")
        parser.exit()


_SUBCOMMANDS = {
    "dump": ("freeze a process tree and write its images", _dump_arguments),
    "restore": ("bring a dumped tree back", _restore_arguments),
    "show": ("print an image set as JSON", _show_arguments),
    "plan": ("print the restore order of an image set", _plan_arguments),
    "plugins": ("list plugins, where each came from, and if it is on", _common),
    "check": ("check that this kernel has what the engine needs", _no_arguments),
    "swrk": ("serve CRIU's RPC on an inherited socket, as `criu swrk FD`", _swrk_arguments),
    "service": ("serve CRIU's RPC on a unix socket, as `criu service`", _service_arguments),
}


def _split(values: list[str]) -> tuple[str, ...]:
    return tuple(v for item in values for v in item.split(",") if v)


def _registry(args):
    from engine import registry
    return registry.build(args.plugins, _split(args.disable))


def _add_plugin_options(reg, parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("plugin options")
    reg.hook.engine_addoption.call_historic(kwargs={"parser": group})


def _preparse(argv: list[str]):
    """The command and plugin selection, before plugins add their options."""
    pre = argparse.ArgumentParser(add_help=False, formatter_class=_Formatter)
    pre.add_argument("--plugins", default="default")
    pre.add_argument("--disable", action="append", default=[])
    pre.add_argument("-v", "--verbose", action="count", default=0)
    known, rest = pre.parse_known_args(argv)
    known.command = next((a for a in rest if a in COMMANDS), None)
    return known


def run() -> None:
    """The `engine` command: main(), then out at once, its output flushed,
    without tearing the interpreter down (every module and object freed one
    by one: about 10 ms of a restore, and nothing is left to close).

    The cyclic garbage collector is off while the command starts: the
    modules, plugin set and restore plan it builds are tens of thousands of
    objects that live until exit, which each collection walks to free
    nothing (about 40 collections, 7 ms, before a 50-task restore forks).
    A restore keeps it off (engine.restore), a dump turns it on again once
    set up (cmd_dump)."""
    gc.disable()
    code = main()
    if sys.getprofile() is not None or sys.gettrace() is not None:
        sys.exit(code)          # a profiler or coverage writes its report at exit
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            code = code or EXIT_FAILED
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    pre = _preparse(argv)
    logging.basicConfig(level=logging.WARNING - 10 * min(pre.verbose, 2),
                        format="engine: %(name)s: %(message)s")
    parser = _parser(only=pre.command)
    try:
        reg = None
        if pre.command in WITH_PLUGINS:
            reg = _registry(pre)
            _add_plugin_options(reg, parser.subcommands[pre.command])
        args = parser.parse_args(argv)
        return COMMANDS[args.command](args, reg)
    except KeyboardInterrupt:
        print("engine: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - every failure is one line
        if pre.verbose >= 2:
            raise
        msg = " ".join(str(e).split()) or type(e).__name__
        print(f"engine: error: {msg}", file=sys.stderr)
        return EXIT_FAILED


def cmd_dump(args, reg) -> int:
    from engine.dump import DumpContext, dump
    from engine.images import ImageDir
    # A dump runs as long as the tree is big: collect again, but only what
    # it makes from here on (run()).
    gc.freeze()
    gc.enable()
    os.makedirs(args.images_dir, exist_ok=True)
    ctx = DumpContext(images=ImageDir(args.images_dir, _kinds(reg)), registry=reg, options=args)
    dump(ctx, args.tree)
    return 0


def cmd_restore(args, reg) -> int:
    from engine.restore import RestoreContext, restore
    if args.rootless:
        from engine.rootless import enter
        enter(args.pidfile)             # returns in a worker inside the new namespaces
    ctx = RestoreContext(images=_open_images(args.images_dir, reg), registry=reg, options=args)
    pids = restore(ctx)
    if args.pidfile and pids:
        with open(args.pidfile, "w") as f:
            f.write(f"{pids[0]}\n")
    return 0


def cmd_plan(args, reg) -> int:
    from engine.restore import RestoreContext, build_graph
    ctx = RestoreContext(images=_open_images(args.images_dir, reg), registry=reg, options=args)
    graph = build_graph(ctx)
    for i, node in enumerate(graph.order(), 1):
        where = node.where if node.pid is None else f"{node.where} {node.pid}"
        print(f"{i:4d}  {node}  [{node.plugin}; {where}]")
    if args.tree:
        print()
        print("\n".join(graph.tree()))
    return 0


def cmd_show(args, reg) -> int:
    import json
    from engine.images.show import image_dir_to_json
    # Every known plugin's kinds, the disabled ones' too: show decodes a set
    # whatever --plugins/--disable say.
    print(json.dumps(image_dir_to_json(args.dir, _kinds(reg, decode_all=True)), indent=2))
    return 0


def cmd_plugins(args, reg) -> int:
    for name, spec in reg.specs.items():
        state = "on" if reg.is_enabled(name) else "off"
        extra = " (essential)" if spec.essential else ""
        print(f"{name:10s} {state:3s} {spec.runs_in:6s} from {spec.origin}{extra}")
        print(f"{'':10s} provides: {', '.join(spec.provides) or '-'}; "
              f"after: {', '.join(spec.after) or '-'}"
              + (f"; in its task after: {', '.join(spec.after_in_task)}"
                 if spec.after_in_task else ""))
    return 0


def cmd_check(args, reg) -> int:
    from engine.check import run_checks
    return run_checks()


def cmd_swrk(args, reg) -> int:
    from engine.rpc.service import swrk
    return swrk(args.fd)


def cmd_service(args, reg) -> int:
    from engine.rpc.service import service
    return service(args.address)


WITH_PLUGINS = ("dump", "restore", "plan", "plugins", "show")
COMMANDS = {"dump": cmd_dump, "restore": cmd_restore, "show": cmd_show,
            "plan": cmd_plan, "plugins": cmd_plugins, "check": cmd_check,
            "swrk": cmd_swrk, "service": cmd_service}


def _kinds(reg, decode_all: bool = False):
    from engine.images.kinds import plugin_kinds
    return plugin_kinds(reg, decode_all)


def _open_images(path: str, reg):
    from engine.images import ImageDir
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: no such image directory")
    return ImageDir(path, _kinds(reg))
