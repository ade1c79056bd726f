"""criu_opts to the engine's own command line: each option set to anything
but its default is mapped, or the request is refused naming it. None is
passed over in silence: what an option maps to is written to the log."""
from __future__ import annotations

DUMP, RESTORE = "dump", "restore"

# Read by requests.py itself (directories, log, notifies), not mapped here.
SERVICE_OPTIONS = {"images_dir_fd", "images_dir", "work_dir_fd", "log_file", "log_level",
                   "log_to_stderr", "notify_scripts"}

# Why an option the engine does not honour is refused, where a reason helps.
WHY_NOT = {
    "track_mem": "no memory tracking (no soft-dirty bits here), so no incremental dumps",
    "parent_img": "no incremental dumps (no memory tracking)",
    "lazy_pages": "lazy restore is not offered",
    "orphan_pts_master": "terminals are not restored yet",
    "external": "external resources are not taken yet",
    "inherit_fd": "inherited fds are not taken yet",
    "evasive_devices": "devices are not looked up by number",
    "ps": "there is no page server",
    "auto_dedup": "no page server or deduplication",
    "tcp_close": "TCP connections are restored as they were, never closed",
}


class Refused(Exception):
    """An option the engine cannot honour: the request fails, naming it."""

    def __init__(self, option: str, why: str):
        super().__init__(f"option {option} is not supported by the engine: {why}")
        self.option = option


def to_argv(opts, kind: str, images_dir: str, notes: list[str]) -> list[str]:
    """The `engine dump` or `engine restore` command line `opts` asks for;
    what each mapped option does is appended to `notes` (for the log)."""
    argv = ["-D", images_dir]
    for field, value in opts.ListFields():
        name = field.name
        if name in SERVICE_OPTIONS or _is_default(field, value):
            continue
        mapper = _MAPPERS.get(name)
        if mapper is None or kind not in mapper[0]:
            raise Refused(name, WHY_NOT.get(name, f"not offered on {kind}"))
        args, note = mapper[1](value, name)
        argv += args
        notes.append(f"{name}={value!r}: {note}")
    return argv


def _is_default(field, value) -> bool:
    if field.is_repeated:
        return len(value) == 0
    return value == field.default_value


def _flag(flag: str, note: str):
    return lambda value, name: ([flag] if value else [], note)


def _as_is(note: str):
    return lambda value, name: ([], note)


def _pid(value, name):
    return ["-t", str(value)], "the tree dumped is this pid's"


def _root(value, name):
    # plugins/mntns: the root of a dumped mount tree at restore; unused at dump.
    return ["--root", value], f"--root {value}"


def _ext_mnt(value, name):
    args = [a for m in value for a in ("--external", f"mnt[{m.key}]:{m.val}")]
    return args, " ".join(args)


# CRIU's cpu_cap bits (criu/include/cr_options.h).
CPU_CAP_FPU, CPU_CAP_CPU, CPU_CAP_INS, CPU_CAP_IMAGE = 1, 2, 4, 8


def _cpu_cap(value, name):
    if value & CPU_CAP_CPU:
        raise Refused(name, "the strict cpu check (cpu) is not offered: fpu, ins or none")
    check = "ins" if value & CPU_CAP_INS else "fpu" if value & CPU_CAP_FPU else "none"
    return ["--cpu-cap", check], f"--cpu-cap {check}"


def _network_lock(value, name):
    from engine.images.proto import rpc_pb2
    if value == rpc_pb2.SKIP:
        raise Refused(name, "the engine always locks the connections it dumps")
    return [], "the engine locks TCP connections with its own nftables table"


# criu_cg_mode (rpc.proto) -> --manage-cgroups; DEFAULT is CRIU's: soft.
CG_MODES = {0: "ignore", 1: "none", 2: "props", 3: "soft", 4: "full", 5: "strict", 6: "soft"}


def _cg_mode(value, name):
    return ["--manage-cgroups", CG_MODES[value]], f"--manage-cgroups {CG_MODES[value]}"


def _cg_root(value, name):
    args = []
    for root in value:
        args += ["--cgroup-root", f"{root.ctrl}:{root.path}" if root.ctrl else root.path]
    return args, " ".join(args)


CLONE_NEWNET = 0x40000000


def _empty_ns(value, name):
    if value & ~CLONE_NEWNET:
        raise Refused(name, "only CLONE_NEWNET (a fresh network namespace) is offered")
    return ["--empty-ns", "net"], "--empty-ns net"


_BOTH = (DUMP, RESTORE)
_MAPPERS = {
    "pid": ((DUMP,), _pid),
    "leave_running": ((DUMP,), _flag("--leave-running", "--leave-running")),
    "leave_stopped": (_BOTH, _flag("--leave-stopped", "--leave-stopped")),
    "manage_cgroups": (_BOTH, _as_is("cgroups are dumped and restored (plugins/cgroup)")),
    "manage_cgroups_mode": (_BOTH, _cg_mode),
    "cg_root": ((RESTORE,), _cg_root),
    "empty_ns": ((RESTORE,), _empty_ns),
    "freeze_cgroup": ((DUMP,), lambda value, name: (["--freeze-cgroup", value],
                                                    f"--freeze-cgroup {value}")),
    "ext_unix_sk": (_BOTH, _flag("--ext-unix-sk", "--ext-unix-sk")),
    "tcp_established": (_BOTH, _as_is("established TCP connections are always dumped")),
    "file_locks": (_BOTH, _as_is("file locks are always dumped and restored")),
    "shell_job": (_BOTH, _as_is("a session or group outside the tree is always inherited "
                                "(terminals: not yet)")),
    "rst_sibling": ((RESTORE,), _as_is("the root is the service's child; it goes to the "
                                       "caller, if a subreaper, once the service exits")),
    "ghost_limit": ((DUMP,), lambda value, name: (["--ghost-limit", str(value)],
                                                  "deleted files saved up to this size")),
    "cpu_cap": (_BOTH, _cpu_cap),
    "root": (_BOTH, _root),
    "ext_mnt": (_BOTH, _ext_mnt),
    "network_lock": (_BOTH, _network_lock),
}
