"""pagemap-PID.img + pages-N.img: which pages were dumped, and their bytes.

pagemap-PID.img is a pagemap_head (naming pages-N.img) then one
pagemap_entry per run of pages; pages-N.img is the raw pages, in pagemap
order, with no header (criu/page-xfer.c, criu/pagemap.c). Runs flagged
PE_LAZY are in the pages file too unless the dump was lazy; in_parent runs
(incremental dumps) are refused. Pages are written straight from the tracer's
buffers and read back through one mmap, never copied per page in Python.
"""
from __future__ import annotations

import ctypes
import mmap
import os

from engine.images.framing import ImageError, read_entries, write_entries
from engine.images.kinds import ImageKind

PAGE = 4096
PE_PARENT = 1 << 0
PE_LAZY = 1 << 1
PE_PRESENT = 1 << 2

# Defined beside its format's reader and writer, which need no registry;
# registered by the mem plugin, whose images these are.
PAGEMAP = ImageKind("pagemap", "pagemap-{id}.img", 0x56084025, "engine.images.proto.mm_pb2",
                    "pagemap_entry", head="pagemap_head", magic_name="PAGEMAP",
                    per_task=True)


class PagemapWriter:
    def __init__(self, image_dir: str, pid: int, pages_id: int):
        self.dir, self.pid, self.pages_id = str(image_dir), pid, pages_id
        self._pages = open(os.path.join(self.dir, f"pages-{pages_id}.img"), "wb")
        self._runs: list[list[int]] = []        # [vaddr, nr_pages]

    def add(self, vaddr: int, data) -> None:
        size = len(memoryview(data).cast("B"))
        if vaddr % PAGE or size % PAGE:
            raise ValueError(f"pagemap: run {vaddr:#x}+{size} is not page-aligned")
        self._pages.write(data)
        nr = size // PAGE
        last = self._runs[-1] if self._runs else None
        if last and last[0] + last[1] * PAGE == vaddr:
            last[1] += nr
        else:
            self._runs.append([vaddr, nr])

    def close(self) -> None:
        if self._pages.closed:
            return
        self._pages.close()
        kind = PAGEMAP
        head = kind.message_class(first=True)(pages_id=self.pages_id)
        entry_cls = kind.message_class()
        # CRIU 4.x reads the count from field 5 (`pages`); field 2 keeps older
        # readers (crit 3.17) sensible for runs under 2^32 pages.
        entries = [entry_cls(vaddr=v, nr_pages=min(n, 0xFFFFFFFF), pages=n, flags=PE_PRESENT)
                   for v, n in self._runs]
        write_entries(os.path.join(self.dir, f"pagemap-{self.pid}.img"), kind, [head, *entries])


class PagemapReader:
    def __init__(self, image_dir: str, pid: int):
        kind = PAGEMAP
        self.name = f"pagemap-{pid}.img"
        entries = read_entries(os.path.join(str(image_dir), self.name), kind)
        if not entries:
            raise ImageError(self.name, "no pagemap_head")
        self.pages_name = f"pages-{entries[0].pages_id}.img"
        self._runs = []
        offset = 0
        for i, e in enumerate(entries[1:], 1):
            nr = e.pages if e.HasField("pages") else e.nr_pages
            if e.in_parent or e.flags & PE_PARENT:
                raise ImageError(self.name, f"entry {i}: pages in a parent image set "
                                            "(incremental dumps are not supported)")
            if e.vaddr % PAGE:
                raise ImageError(self.name, f"entry {i}: vaddr {e.vaddr:#x} not page-aligned")
            if e.HasField("flags") and not e.flags & PE_PRESENT:
                continue
            self._runs.append((e.vaddr, nr * PAGE, offset))
            offset += nr * PAGE
        path = os.path.join(str(image_dir), self.pages_name)
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise ImageError(self.pages_name, e.strerror) from None
        try:
            size = os.fstat(fd).st_size
            if size < offset:
                raise ImageError(self.pages_name, f"holds {size} bytes, {self.name} "
                                                  f"needs {offset}")
            self.address, self.size = _map_readonly(fd, size), size
            # A ctypes view over the mapping: sliceable, and its address is
            # what process_vm_writev is handed.
            self.buffer = (ctypes.c_char * size).from_address(self.address) if size else None
        finally:
            os.close(fd)

    def runs(self):
        """(vaddr, length, offset in the pages file) of every dumped run."""
        return iter(self._runs)

    def close(self) -> None:
        if self.buffer is not None:
            from engine import libc
            libc.munmap(self.address, self.size)
            self.buffer = None


def _map_readonly(fd: int, size: int) -> int:
    """mmap the pages file read-only and populated in one go: faulting it in
    4 KiB at a time costs more than the copy itself."""
    if not size:
        return 0
    from engine import libc
    addr = libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_PRIVATE | mmap.MAP_POPULATE, fd, 0)
    if addr in (None, ctypes.c_void_p(-1).value):
        raise OSError(ctypes.get_errno(), "mmap of the pages file")
    return addr
