"""mem: VMAs and pages, big and small, and bad memory images."""
import shutil

import pytest

from engine.testing import engine_fails, task_gone


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_256_mib_pattern_heap_and_stack(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("bigmem", variant), "--mib", "256")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def _restore_fails(img, pid, *needles):
    line = engine_fails("restore", "-D", img)
    for needle in needles:
        assert needle in line
    assert task_gone(pid), "a failed restore left the task behind"
    return line


def test_missing_pages_file_is_refused(dumped_counter):
    target, img = dumped_counter
    for pages in img.glob("pages-*.img"):
        pages.unlink()
    _restore_fails(img, target.pid, "pages-")


def _spoil_outside(vmas):
    vmas[0].start, vmas[0].end = 0xFFFF800000000000, 0xFFFF800000001000


def _spoil_alignment(vmas):
    vmas[0].end += 1


def _spoil_overlap(vmas):
    vmas[1].start = vmas[0].start


def _spoil_file(vmas):
    from engine.tracer.model import VMA_FILE_PRIVATE, VMA_FILE_SHARED
    file_backed = next(v for v in vmas
                       if v.shmid and v.status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED))
    file_backed.shmid = 999999


@pytest.mark.parametrize("spoil, needles", [
    (_spoil_outside, ["vma 0 (0xffff800000000000-0xffff800000001000): outside user space"]),
    (_spoil_alignment, ["vma 0 (", "not a page-aligned range"]),
    (_spoil_overlap, ["overlaps the previous VMA"]),
    (_spoil_file, ["shmid 999999 is not a file of files.img"]),
])
def test_bad_vma_is_refused_naming_it(dumped_counter, spoil, needles):
    from engine.images import ImageDir
    target, img = dumped_counter
    images = ImageDir(str(img))
    mm = images.read_one("mm", id=target.pid)
    spoil(mm.vmas)
    images.write("mm", [mm], id=target.pid)
    _restore_fails(img, target.pid, f"mm-{target.pid}.img", *needles)


def test_truncated_pages_file_is_refused(dumped_counter):
    target, img = dumped_counter
    pages = next(img.glob("pages-*.img"))
    with open(pages, "r+b") as f:
        f.truncate(pages.stat().st_size // 2)
    _restore_fails(img, target.pid, "pages-")


def test_restore_twice_is_refused_while_the_pid_is_in_use(dumped_counter, engine_cli, tmp_path):
    target, img = dumped_counter
    copy = tmp_path / "copy"
    shutil.copytree(img, copy)
    engine_cli("restore", "-D", img)
    line = engine_fails("restore", "-D", copy)
    assert "pstree.img" in line and f"pid {target.pid} is in use" in line
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_shared_and_private_file_mappings_anon_shared_guard_readonly(
        build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("mappings", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_shared_anonymous_memory_stays_shared_between_tasks(build_target, target_runner,
                                                            dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("shmem", variant))
    assert dump_restore(target, tmp_path) == "PASS"


def _processes_naming(text: str) -> list[int]:
    """Pids whose command line holds `text` (an engine run, or a fork of one)."""
    import os
    out = []
    for name in os.listdir("/proc"):
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                if text.encode() in f.read():
                    out.append(int(name))
        except (OSError, ValueError):
            pass
    return out


@pytest.mark.parametrize("index", [1, 2, 3, 4])
def test_memory_failing_in_any_task_undoes_the_whole_tree(build_target, target_runner,
                                                          tmp_path, index):
    """Each task's memory goes wrong in turn, so some fail in the engine
    and some in the second tracer (which restores half of the tasks of a
    tree): every case is one line, and no task and no tracer is left."""
    from engine.testing import dump_to
    target = target_runner.start(build_target("tree"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    pids = [e.pid for e in images.read("pstree")]
    victim = pids[index]
    # A mapping of a file gone since the dump: a sound image, but the
    # tracer's open of it fails, in whichever tracer restores the victim.
    files = images.read("files")
    gone = files[0].__class__()
    gone.CopyFrom(next(f for f in files if f.HasField("reg")))
    gone.id = gone.reg.id = max(f.id for f in files) + 1
    gone.reg.name = str(tmp_path / "gone")
    images.write("files", files + [gone])
    mm = images.read_one("mm", id=victim)
    mm.vmas.add(start=0x200000000000, end=0x200000001000, pgoff=0, shmid=gone.id, prot=1,
                flags=0x2, status=0x41, fd=-1)
    mm.vmas.sort(key=lambda v: v.start)
    images.write("mm", [mm], id=victim)
    _restore_fails(img, victim, f"{victim}", str(tmp_path / "gone"))
    for pid in pids:
        assert task_gone(pid), f"task {pid} of the failed restore is still there"
    assert _processes_naming(str(img)) == [], "an engine process outlived the failed restore"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_layouts_holes_private_file_data_and_past_eof_across_three_tasks(
        build_target, target_runner, dump_restore, tmp_path, variant):
    """Shared and private anonymous regions cut by mprotect (a PROT_NONE
    hole, a read-only page) and munmap, a private file mapping's written
    and unwritten pages, and a mapping past its file's end (dumped without
    the pages there, which still SIGBUS): each task checks its contents and
    its /proc/self/maps protections; --verify compares CRCs."""
    target = target_runner.start(build_target("memlayout", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
@pytest.mark.parametrize("how", ["unmapped", "moved"])
def test_vdso_unmapped_or_moved_by_the_program(build_target, target_runner, dump_restore,
                                               tmp_path, variant, how):
    """The tracer finds a `syscall` outside the vdso (any executable
    mapping) and restore leaves the vdso where the program put it, or gone."""
    args = ["--move"] if how == "moved" else []
    target = target_runner.start(build_target("vdsogone", variant), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("how, want", [
    ("mm_brk at the end of data", "PR_SET_MM_MAP"),
    ("pages at an address no VMA covers", "Bad address"),
])
def test_memory_the_kernel_refuses_names_its_images(build_target, target_runner, tmp_path,
                                                    how, want):
    """Values the checks at collect let through but the kernel will not
    take: one line naming mm-PID.img and pagemap-PID.img, no task left."""
    from engine.testing import dump_to, engine_fails, task_gone
    target = target_runner.start(build_target("counter"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    if how.startswith("mm_brk"):
        mm = images.read("mm", id=target.pid)
        mm[0].mm_brk = mm[0].mm_end_data           # the kernel wants brk past the data
        images.write("mm", mm, id=target.pid)
    else:
        pm = images.read("pagemap", id=target.pid)
        pm[1].vaddr = 0x7fffffffe000 - 4096 * pm[1].nr_pages
        images.write("pagemap", pm, id=target.pid)
    line = engine_fails("restore", "-D", img)
    assert f"mm-{target.pid}.img, pagemap-{target.pid}.img: the kernel refused" in line, line
    assert want in line, line
    assert task_gone(target.pid)
