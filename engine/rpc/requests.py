"""One handler per request type; each returns the criu_resp to send.

DUMP and RESTORE run the engine in this process (engine.dump.dump,
engine.restore.restore), with the plugin set `engine dump`/`engine restore`
would load, their options built from criu_opts (options.py), the caller's
directories opened through /proc/PEER/fd/N, and a log file in the work
directory (the images directory when none is given), as CRIU keeps one.
"""
from __future__ import annotations

import logging
import os

from engine.rpc import CRIU_VERSION, options
from engine.rpc.channel import high_fd

log = logging.getLogger("engine.rpc")

DEFAULT_LOG_FILE = "criu.log"             # CRIU's, when log_file is not given
# CRIU's log levels (0 messages only ... 4 debug) as logging's.
LOG_LEVELS = {0: logging.CRITICAL, 1: logging.ERROR, 2: logging.WARNING, 3: logging.INFO}


def handle(channel, req):
    from engine.images.proto import rpc_pb2 as pb
    handler = {pb.VERSION: version, pb.CHECK: check, pb.FEATURE_CHECK: feature_check,
               pb.DUMP: dump, pb.RESTORE: restore}.get(req.type)
    if handler is None:
        return failure(req.type, f"{pb.criu_req_type.Name(req.type)} requests are not "
                                 "supported by the engine")
    return handler(channel, req)


def failure(kind, message: str, code: int = 0):
    from engine.images.proto import rpc_pb2 as pb
    resp = pb.criu_resp(type=kind, success=False, cr_errmsg=message)
    if code:
        resp.cr_errno = code
    return resp


def version(channel, req):
    from engine.images.proto import rpc_pb2 as pb
    resp = pb.criu_resp(type=pb.VERSION, success=True)
    resp.version.major_number, resp.version.minor_number = CRIU_VERSION
    resp.version.name = "engine"
    return resp


def check(channel, req):
    from engine.check import CHECKS
    from engine.images.proto import rpc_pb2 as pb
    problems = [f"{name}: {problem}" for name, probe in CHECKS.items()
                if (problem := probe()) is not None]
    if problems:
        return failure(pb.CHECK, "; ".join(problems))
    return pb.criu_resp(type=pb.CHECK, success=True)


def feature_check(channel, req):
    """Each feature asked about, answered for what the engine does: no memory
    tracking (no soft-dirty pre-dumps), no lazy pages, no pidfd store."""
    from engine.images.proto import rpc_pb2 as pb
    resp = pb.criu_resp(type=pb.FEATURE_CHECK, success=True)
    for name in ("mem_track", "lazy_pages", "pidfd_store"):
        if req.features.HasField(name):
            setattr(resp.features, name, False)
    return resp


def dump(channel, req):
    return _serve(channel, req, options.DUMP, _dump)


def restore(channel, req):
    return _serve(channel, req, options.RESTORE, _restore)


def _dump(args, reg, notifier):
    from engine.dump import DumpContext, dump as run_dump
    from engine.images import ImageDir
    from engine.images.kinds import plugin_kinds
    from engine.images.proto import rpc_pb2 as pb
    if notifier:
        notifier.send("pre-dump")
    ctx = DumpContext(images=ImageDir(args.images_dir, plugin_kinds(reg)),
                      registry=reg, options=args)
    run_dump(ctx, args.tree)
    resp = pb.criu_resp(type=pb.DUMP, success=True)
    resp.dump.restored = False
    return resp


def _restore(args, reg, notifier):
    from engine.images import ImageDir
    from engine.images.kinds import plugin_kinds
    from engine.images.proto import rpc_pb2 as pb
    from engine.restore import RestoreContext, restore as run_restore
    if notifier:
        notifier.send("pre-restore")
    ctx = RestoreContext(images=ImageDir(args.images_dir, plugin_kinds(reg)),
                         registry=reg, options=args)
    pids = run_restore(ctx)
    resp = pb.criu_resp(type=pb.RESTORE, success=True)
    resp.restore.pid = pids[0]
    return resp


def _serve(channel, req, kind, body):
    """`body(args, registry, notifier)` with the engine's options and plugin
    set for a DUMP or RESTORE, the caller's directories open and the log
    file written; any error becomes a criu_resp with success false, its
    message in cr_errmsg and its errno, if any, in cr_errno."""
    from engine.images.proto import rpc_pb2 as pb
    resp_type = pb.DUMP if kind == options.DUMP else pb.RESTORE
    opened: list[int] = []
    handler = None
    try:
        opts = req.opts
        images_dir = _images_dir(channel, opts, opened)
        handler = None
        if not opts.log_to_stderr:
            handler = log_to(_work_dir(channel, opts, images_dir, opened),
                             opts.log_file or DEFAULT_LOG_FILE, opts.log_level)
        notes: list[str] = []
        argv = options.to_argv(opts, kind, images_dir, notes)
        if kind == options.DUMP and not opts.HasField("pid"):
            argv += ["-t", str(channel.peer_pid)]      # CRIU dumps the caller then
        for note in notes:
            log.info("%s", note)
        args, reg = _engine_options(kind, argv)
        notifier = None
        if opts.notify_scripts:
            from engine.rpc.notify import Notifier
            notifier = Notifier(channel)
            reg.pm.register(notifier, name=Notifier.NAME)
        log.info("%s of %s requested by pid %d", kind, images_dir, channel.peer_pid)
        return body(args, reg, notifier)
    except Exception as e:  # noqa: BLE001 - every failure is the client's answer
        message = " ".join(str(e).split()) or type(e).__name__
        log.error("%s failed: %s", kind, message)
        return failure(resp_type, message, getattr(e, "errno", None) or 0)
    finally:
        if handler is not None:
            logging.getLogger().removeHandler(handler)
            handler.close()
        for fd in opened:
            os.close(fd)


# kind -> (registry, parser) made before any request by prepare(): each is
# used by one request only (a notifier registers itself in the registry).
_prepared: dict[str, tuple] = {}


def prepare() -> None:
    """What every DUMP and RESTORE needs and no request changes: the plugin
    set (hooks.toml parsed, plugins imported), the parsers with the plugins'
    options, the image kinds, the protobuf modules and the engine's dump and
    restore modules. `engine service` calls it once before it listens; each
    worker it forks inherits it all (issue 19's warm service)."""
    import engine.dump  # noqa: F401 - imported here so no worker pays it
    import engine.restore  # noqa: F401
    import engine.images.kinds  # noqa: F401
    for kind in (options.DUMP, options.RESTORE):
        _prepared[kind] = _fresh_options(kind)
    # What the dump and restore import on their way (every image's protobuf
    # module, the tracer, the plugins' submodules): ~45 ms of a restore.
    import engine.images.proto
    import engine.tracer
    import plugins
    for package in (engine.images.proto, engine.tracer, plugins):
        _import_all(package)
    # pyroute2 (sock_diag of the socket plugins' dumps): ~110 ms, imported
    # by those plugins only when a dump meets a socket.
    for name in ("engine.tracers", "engine.ns", "engine.libc", "engine.images.pagemap",
                 "pyroute2"):
        _import_quietly(name)


def _import_all(package) -> None:
    import pkgutil
    for info in pkgutil.walk_packages(package.__path__, package.__name__ + ".",
                                      onerror=lambda name: None):
        _import_quietly(info.name)


def _import_quietly(name: str) -> None:
    """Import `name` ahead of time; one that fails here is left to fail (or
    not) when a request needs it, as it would without the warm-up."""
    import importlib
    try:
        importlib.import_module(name)
    except Exception as e:  # noqa: BLE001
        log.debug("warm-up: %s not imported: %s", name, e)


def _fresh_options(kind: str):
    from engine import cli
    from engine.registry import build
    reg = build("default", ())
    parser = cli._parser(only=kind)
    cli._add_plugin_options(reg, parser.subcommands[kind])
    return reg, parser


def _engine_options(kind: str, argv: list[str]):
    """The options `engine KIND ARGV` would run with (plugin options and
    their defaults included), and its plugin set."""
    reg, parser = _prepared.pop(kind, None) or _fresh_options(kind)
    try:
        args = parser.parse_args([kind, *argv])
    except SystemExit:
        raise ValueError(f"engine {kind} {' '.join(argv)}: not a valid command line") from None
    return args, reg


def _images_dir(channel, opts, opened: list[int]) -> str:
    """The images directory as a path this process (and what it forks) can
    open: the caller's fd, opened here through /proc/PEER/fd/N."""
    if opts.images_dir_fd < 0:
        if not opts.images_dir:
            raise ValueError("neither images_dir_fd nor images_dir is given")
        return opts.images_dir
    return _open_dir(channel, opts.images_dir_fd, "images_dir_fd", opened)


def _work_dir(channel, opts, images_dir: str, opened: list[int]) -> str:
    if not opts.HasField("work_dir_fd"):
        return images_dir
    return _open_dir(channel, opts.work_dir_fd, "work_dir_fd", opened)


def _open_dir(channel, fd: int, what: str, opened: list[int]) -> str:
    try:
        mine = os.open(channel.peer_fd_path(fd), os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as e:
        raise OSError(e.errno, f"{what} {fd} of pid {channel.peer_pid}: "
                               f"{os.strerror(e.errno)}") from None
    mine = high_fd(mine)
    opened.append(mine)
    return f"/proc/{os.getpid()}/fd/{mine}"


def log_to(work_dir: str, name: str, criu_level: int):
    """A handler writing the engine's log to file `name` in `work_dir` at
    CRIU's log level `criu_level`; the caller removes and closes it."""
    if "/" in name:
        raise ValueError(f"log file {name!r}: no subdirectories are allowed (CRIU's rule)")
    fd = high_fd(os.open(os.path.join(work_dir, name),
                         os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600))
    handler = logging.StreamHandler(open(fd, "w", buffering=1))
    handler.setFormatter(logging.Formatter("(%(relativeCreated)9.3f) %(name)s: %(message)s"))
    handler.setLevel(LOG_LEVELS.get(criu_level, logging.DEBUG))
    root = logging.getLogger()
    for other in root.handlers:      # they keep showing what they showed
        if other.level == logging.NOTSET:
            other.setLevel(root.level)
    root.addHandler(handler)
    root.setLevel(min(root.level, handler.level))
    return handler
