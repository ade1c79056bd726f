"""mem: VMAs, pages and mm fields (mm-PID.img, pagemap-PID.img, pages-N.img).

Dump: every VMA of the task as CRIU classifies it (criu/proc_parse.c), the
mm fields and auxv, and the content of every present page that is the task's
own (anonymous, or a private copy of a file page); file-backed VMAs name
their file through a REG entry of files.img (vma.shmid), as does the exe.
A mapping another plugin claimed before (its path cleared, its file id in
shmid) is written as claimed: a memfd's (memfd), a deleted file's (files:
a ghost, which restore maps from ``mapped-ghosts``); a deleted mapped file
nobody claimed is refused.
Restore: in the tracer, after every task-side node: the task's own mappings
are replaced by the dumped ones and the pages written in from the mmap'd
pages file (criu/pie/restorer.c does the same from a blob). A VMA outside
user space, overlapping, or not page-aligned is refused before any task
exists, naming mm-PID.img and the VMA.
A System V segment attached (/SYSV in maps) is a VMA_AREA_SYSVIPC VMA whose
shmid is the segment's id (its data is in plugins/ipcns' image): attached
again by shmat at its address once the rest is mapped, and the pages the
task had mapped in it (those the pages file holds) faulted in again. The
nodes of the tasks attaching one segment share a tracer, so the last of
them removes a segment that was IPC_RMID'd (ctx.provided("ipcns")).
Refused at dump: one attached from an offset. A task's memory comes after
the node providing ("ipcns", its IPC namespace id), if any: the one making
the segments of the engine's own namespace.
"""
from __future__ import annotations

import errno
import logging

from engine.images.entries import add_file
from engine import hookimpl
from engine.graph import Node
from engine.images import ImageError
from engine.stash import StashKey

log = logging.getLogger("engine.plugins.mem")

PAGE = 4096
TASK_SIZE = 0x7FFFFFFFF000        # x86_64 4-level user space end
# path -> file id in files.img, so one file mapped many times is one entry
MAPPED_FILES = StashKey()
PAGES_IDS = StashKey()
SHARED_ANON = StashKey()      # shmid -> the first task's mapping of it
SYSV_VMAS = StashKey()        # pid -> its VMA_AREA_SYSVIPC vmas, shmat'd after the rest
VMA_AREA_SYSVIPC = 1 << 10    # criu/include/image.h
VMA_AREA_REGULAR_SYSVIPC = 1 | 1 << 8 | VMA_AREA_SYSVIPC    # as CRIU: REGULAR, ANON_SHARED
SHM_RDONLY, SHM_EXEC = 0o10000, 0o100000
PROT_WRITE, PROT_EXEC = 2, 4
SYS_SHMAT, SYS_SHMCTL, IPC_RMID = 30, 31, 0
SYSV_LEFT = StashKey()        # (ipc ns id, shmid) -> attachments not made yet
MADV_POPULATE_READ = 22
SHARED_EXTENTS = StashKey()   # shmid -> (lowest pgoff, highest end) over all tasks

VMA_AREA_MEMFD = 1 << 14      # criu/include/image.h: shmid names a MEMFD file entry
MM_FIELDS = ("mm_start_code", "mm_end_code", "mm_start_data", "mm_end_data",
             "mm_start_stack", "mm_start_brk", "mm_brk", "mm_arg_start", "mm_arg_end",
             "mm_env_start", "mm_env_end")
VMA_FIELDS = ("start", "end", "pgoff", "prot", "flags", "status", "madv")


# --- registration ---------------------------------------------------------

@hookimpl
def engine_register_images(registry):
    from engine.images.kinds import ImageKind
    from engine.images.pagemap import PAGEMAP
    P = "engine.images.proto."
    registry.register(ImageKind("mm", "mm-{id}.img", 0x57492820, P + "mm_pb2", "mm_entry",
                                magic_name="MM", per_task=True))
    registry.register(PAGEMAP)


# --- dump ----------------------------------------------------------------

@hookimpl
def engine_dump_task(ctx, task):
    if task.zombie is not None:
        return           # a zombie has no fds, fs or memory
    from engine.images.pagemap import PagemapWriter
    from engine.images.proto import mm_pb2
    from engine.tracer import dump_pages
    from engine.tracer.model import VMA_ANON_SHARED, VMA_FILE_PRIVATE, VMA_FILE_SHARED

    mm = task.state.mm
    entry = mm_pb2.mm_entry(**{f: getattr(mm, f) for f in MM_FIELDS})
    entry.mm_saved_auxv.extend(mm.auxv)
    if mm.exe:
        entry.exe_file_id = _file_id(ctx, mm.exe)
    sysv = _sysv_starts(task.pid)
    for vma in mm.vmas:
        # A file mapping a plugin claimed (a memfd, a deleted file) has no
        # path left, and its file id in shmid; a MAP_SHARED|MAP_ANONYMOUS
        # one its shmem inode (as CRIU's shmid): two such regions are two.
        claimed = vma.path is None and vma.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)
        shared = vma.status & VMA_ANON_SHARED
        v = entry.vmas.add(shmid=vma.shmid if claimed or shared else 0, fd=-1,
                           **{f: getattr(vma, f) for f in VMA_FIELDS})
        if vma.path and vma.path.endswith(" (deleted)"):
            # no plugin claimed it (files saves a deleted file as a ghost)
            raise ValueError(f"task {task.pid}: VMA {vma.start:#x}-{vma.end:#x}: a deleted "
                             f"mapped file ({vma.path}): not supported")
        if vma.path:
            v.shmid = _file_id(ctx, vma.path)
        elif vma.start in sysv:
            v.status, v.shmid = VMA_AREA_REGULAR_SYSVIPC, vma.shmid
    ctx.images.write("mm", [entry], id=task.pid)

    pages_id = ctx.stash.get(PAGES_IDS, 0) + 1
    ctx.stash[PAGES_IDS] = pages_id
    # Named by the pid at the image set's level (ImageDir.pid_alias).
    named = ctx.images.pid_alias.get(task.pid, task.pid)
    writer = PagemapWriter(ctx.images.dir, named, pages_id)
    try:
        dump_pages(task.tracee, mm.vmas, writer)
    finally:
        writer.close()


# --- restore ---------------------------------------------------------------

@hookimpl
def engine_restore_collect(ctx, graph):
    from engine.tracer import model
    extents = ctx.stash.setdefault(SHARED_EXTENTS, {})
    for task in ctx.provided("tasks").alive:
        image = f"mm-{task.pid}.img"
        mm = ctx.images.read_one("mm", id=task.pid)
        state = _mm_state(ctx, mm, image)
        sysv = [v for v in state.vmas if v.status & VMA_AREA_SYSVIPC]
        segments = []
        if sysv:
            ctx.stash.setdefault(SYSV_VMAS, {})[task.pid] = sysv
            state.vmas = [v for v in state.vmas if not v.status & VMA_AREA_SYSVIPC]
            ns_id, left = ctx.ids(task.pid).ipc_ns_id, ctx.stash.setdefault(SYSV_LEFT, {})
            for v in sysv:
                left[ns_id, v.shmid] = left.get((ns_id, v.shmid), 0) + 1
            segments = sorted({f"sysv:{ns_id}:{v.shmid}" for v in sysv})
        # A MAP_SHARED anonymous region is mapped by the first task and
        # from it by the others (SHARED_ANON): one tracer for all of them.
        shared = sorted({f"shmem:{v.shmid}" for v in state.vmas
                         if v.status & model.VMA_ANON_SHARED})
        for v in state.vmas:
            if v.status & model.VMA_ANON_SHARED:
                lo, hi = extents.get(v.shmid, (v.pgoff, 0))
                extents[v.shmid] = (min(lo, v.pgoff), max(hi, v.pgoff + v.end - v.start))
        graph.add(Node(key=f"mem:{task.pid}", plugin="mem", pid=task.pid, data=state,
                       tracer_shares=shared + segments,
                       after=[("ipcns", ctx.ids(task.pid).ipc_ns_id)] if sysv else [],
                       label=f"memory of {task.pid} ({len(state.vmas)} VMAs)"))


@hookimpl
def engine_restore_node(ctx, node):
    from engine.images.pagemap import PagemapReader
    from engine.tracer import restore_memory
    pages = PagemapReader(ctx.images.dir, ctx.images.pid_alias.get(node.pid, node.pid))
    sysv = ctx.stash.get(SYSV_VMAS, {}).get(node.pid, ())
    try:
        restore_memory(ctx.tracees[node.pid], node.data, _Outside(pages, sysv) if sysv else pages,
                       ctx.stash.setdefault(SHARED_ANON, {}),
                       shared_extents=ctx.stash.get(SHARED_EXTENTS, None))
        for v in sysv:
            _shmat(ctx, node.pid, v, pages)
    except OSError as e:
        if e.errno == errno.ESRCH:      # the task died: not the images' doing
            raise
        # What the kernel refuses here is the image's mapping or page data
        # (an address process_vm_writev cannot write, mm fields PR_SET_MM_MAP
        # will not take): name the images, not the syscall alone (issue 20).
        pid = ctx.images.pid_alias.get(node.pid, node.pid)
        raise ImageError(f"mm-{pid}.img, pagemap-{pid}.img",
                         f"the kernel refused the memory they describe: {e}") from None
    finally:
        pages.close()
    return True


# --- helpers -----------------------------------------------------------------

def _file_id(ctx, path: str) -> int:
    import os
    from engine.images.entries import regular_file
    ids = ctx.stash.setdefault(MAPPED_FILES, {})
    if path not in ids:
        ids[path] = add_file(ctx, regular_file(path, os.stat(path), flags=os.O_RDONLY, pos=0))
    return ids[path]


def _sysv_starts(pid: int) -> set[int]:
    """Starts of the task's System V segments attached; refuses those it
    cannot attach again."""
    starts = set()
    with open(f"/proc/{pid}/maps") as f:
        for line in f:
            head = line.split(None, 5)
            if len(head) < 6 or not head[5].startswith("/SYSV"):
                continue
            if int(head[2], 16):
                raise ValueError(f"task {pid}: System V segment attached from an offset "
                                 f"(id {head[4]} at {head[0]}, offset {int(head[2], 16):#x}): "
                                 "not supported yet")
            starts.add(int(head[0].split("-")[0], 16))
    return starts


def _shmat(ctx, pid: int, v, pages) -> None:
    """criu/pie/restorer.c: shmat at the dumped address; the segment was
    made, with its id, when the task's IPC namespace was (plugins/ipcns).
    The pages the task had mapped are mapped again (their content is the
    segment's, not the pages file's)."""
    tracee = ctx.tracees[pid]
    flags = (0 if v.prot & PROT_WRITE else SHM_RDONLY) | (SHM_EXEC if v.prot & PROT_EXEC else 0)
    tracee.checked(SYS_SHMAT, v.shmid, v.start, flags,
                   what=f"System V segment id {v.shmid} at {v.start:#x}")
    for vaddr, length, _ in pages.runs():
        if v.start <= vaddr < v.end:
            tracee.checked("madvise", vaddr, min(length, v.end - vaddr), MADV_POPULATE_READ,
                           what=f"System V segment id {v.shmid} at {vaddr:#x}")
    ns_id, left = ctx.ids(pid).ipc_ns_id, ctx.stash[SYSV_LEFT]
    left[ns_id, v.shmid] -= 1
    if not left[ns_id, v.shmid] and v.shmid in ctx.provided("ipcns", {}).get(ns_id, ()):
        tracee.checked(SYS_SHMCTL, v.shmid, IPC_RMID, 0,
                       what=f"IPC_RMID of System V segment id {v.shmid}, attached again")


class _Outside:
    """The pages file without the runs in System V segments, which the
    memory restore must not write (they are not mapped yet)."""

    def __init__(self, pages, sysv):
        self.buffer, self._pages, self._sysv = pages.buffer, pages, sysv

    def runs(self):
        return [run for run in self._pages.runs()
                if not any(v.start <= run[0] < v.end for v in self._sysv)]


def _mm_state(ctx, mm, image: str):
    from engine.tracer.model import (VMA_AREA_VSYSCALL, VMA_FILE_PRIVATE, VMA_FILE_SHARED,
                                     MmState, Vma)
    vmas = []
    prev_end = 0
    # About 20 VMAs a task: what is not needed for a sound one (the text of
    # an error, keyword arguments) is left out of the loop.
    for i, v in enumerate(mm.vmas):
        if v.start % PAGE or v.end % PAGE or v.start >= v.end:
            raise ImageError(_where(image, i, v), "not a page-aligned range")
        if v.end > TASK_SIZE and not v.status & VMA_AREA_VSYSCALL:
            raise ImageError(_where(image, i, v), "outside user space")
        if v.start < prev_end:
            raise ImageError(_where(image, i, v), "overlaps the previous VMA")
        prev_end = v.end
        path = None
        if v.status & VMA_AREA_MEMFD:
            # the memfd the memfd plugin remade, by the file id it names
            path = ctx.provided("memfd").get(v.shmid)
            if path is None or not v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
                raise ImageError(_where(image, i, v), f"shmid {v.shmid} is not a memfd of "
                                                      "files.img")
        elif v.shmid and v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED):
            entry = ctx.provided("files").get(v.shmid)
            if entry is None or not entry.HasField("reg"):
                raise ImageError(_where(image, i, v), f"shmid {v.shmid} is not a file "
                                                      "of files.img")
            # a deleted file's ghost, remade by the files plugin
            path = ctx.provided("mapped-ghosts").get(v.shmid, entry.reg.name)
        # Vma's fields in order: VMA_FIELDS, shmid, path.
        vmas.append(Vma(v.start, v.end, v.pgoff, v.prot, v.flags, v.status, v.madv,
                        v.shmid, path))
    exe = None
    if mm.HasField("exe_file_id"):
        entry = ctx.provided("files").get(mm.exe_file_id)
        if entry is None or not entry.HasField("reg"):
            raise ImageError(image, f"exe_file_id {mm.exe_file_id} is not a file of files.img")
        exe = entry.reg.name
    return MmState(vmas=vmas, auxv=list(mm.mm_saved_auxv), exe=exe,
                   **{f: getattr(mm, f) for f in MM_FIELDS})


def _where(image: str, i: int, v) -> str:
    return f"{image}: vma {i} ({v.start:#x}-{v.end:#x})"
