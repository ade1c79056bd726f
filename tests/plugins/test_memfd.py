"""memfd: held, mapped shared and private, in flight; hugetlb refused; hostile images."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_memfd_held_mapped_and_in_flight(build_target, target_runner, dump_restore, tmp_path,
                                         variant):
    """Name, seals, size, holes, owner, mode and offset kept; the shared
    mapping still one object with the child and the fd, the private one
    keeps its copy; a mapped-only memfd and memfds in flight come back."""
    target = target_runner.start(build_target("memfd", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_memfd_images_are_criu_s(build_target, target_runner, tmp_path):
    """memfd.img, MEMFD file entries, VMA_AREA_MEMFD mappings naming them and
    the data only (the holes left out) in pagemap-shmem-SHMID.img, as CRIU
    4.2 writes them (crit decodes them)."""
    import json
    import subprocess
    target = target_runner.start(build_target("memfd"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    inodes = {i.name: i for i in images.read("memfd")}
    first = inodes["engine memfd.7q"]
    assert (first.size, first.seals, first.uid, first.gid, first.mode) == \
        (5 * 4096, 0x2 | 0x4, 4321, 8765, 0o640)
    assert inodes["engine-maponly"].seals == 0x1            # F_SEAL_SEAL: no MFD_ALLOW_SEALING
    assert set(inodes) == {"engine memfd.7q", "engine-maponly", "engine-in-flight"}
    pagemap = images.read("pagemap-shmem", id=first.shmid)
    # pages 0-1 pattern, 2 a hole, 3 pattern, 4 faulted in by the child's echo
    assert [(e.vaddr, e.pages) for e in pagemap[1:]] == [(0, 2), (3 * 4096, 2)]
    files = {e.id: e for e in images.read("files")}
    vmas = [v for v in images.read("mm", id=target.pid)[0].vmas if v.status & (1 << 14)]
    assert len(vmas) == 3 and all(files[v.shmid].HasField("memfd") for v in vmas)
    out = subprocess.run(["crit", "decode", "-i", str(img / "memfd.img")],
                         capture_output=True, text=True, check=True).stdout
    assert {e["name"] for e in json.loads(out)["entries"]} == set(inodes)


def test_hugetlb_memfd_is_refused_at_dump(build_target, target_runner, engine_cli, tmp_path):
    """No huge pages on this machine: the dump names the task and the memfd,
    and the target runs on untouched."""
    from engine.testing import engine_fails
    target = target_runner.start(build_target("memfd"), "--hugetlb")
    line = engine_fails("dump", "-t", str(target.pid), "-D", tmp_path / "img")
    assert f"task {target.pid}: fd " in line and "/memfd:engine-huge (deleted)" in line \
        and "a hugetlb memfd" in line, line
    assert target.verdict() == "PASS"


def _edit(images, how, pid):
    if how.startswith("mm:"):
        mm = images.read("mm", id=pid)
        next(v for v in mm[0].vmas if v.status & (1 << 14)).shmid = 99999
        images.write("mm", mm, id=pid)
        return
    inodes = images.read("memfd")
    first = next(i for i in inodes if i.name == "engine memfd.7q")
    if how == "size -1":
        first.size = (1 << 64) - 1
    elif how == "size under the data":
        first.size = 4096
    elif how == "unknown seals":
        first.seals |= 0x400
    elif how == "name too long":
        first.name = "m" * 250
    elif how == "hugetlb flag":
        first.hugetlb_flag = 1
    else:
        files = images.read("files")
        next(e for e in files if e.HasField("memfd")).memfd.inode_id = 77
        images.write("files", files)
        return
    images.write("memfd", inodes)


@pytest.mark.parametrize("how, want", [
    ("size -1", "memfd.img: entry 0 (inode_id 1): size 18446744073709551615 is over the "
                "largest file size"),
    ("size under the data", "pagemap-shmem-"),
    ("unknown seals", "memfd.img: entry 0 (inode_id 1): seals 0x406 hold unknown bits 0x400"),
    ("name too long", "memfd.img: entry 0 (inode_id 1): name 'mmm"),
    ("hugetlb flag", "memfd.img: entry 0 (inode_id 1): hugetlb_flag 0x1"),
    ("inode naming nothing", "files.img: MEMFD id "),
    ("mm: shmid naming nothing", "shmid 99999 is not a memfd of files.img"),
])
def test_hostile_memfd_images_are_refused(build_target, target_runner, engine_cli, tmp_path,
                                          how, want):
    """Edited with the protobuf classes: one line naming image and field,
    no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("memfd"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    _edit(images, how, target.pid)
    line = engine_fails("restore", "-D", img)
    assert want in line, line
    if how == "size under the data":
        assert "are past the memfd's size (4096)" in line, line
    if how == "inode naming nothing":
        assert "inode_id 77 is not in memfd.img" in line, line
    assert task_gone(target.pid)


def test_big_memfd_mapping_comes_back_word_for_word(build_target, target_runner, dump_restore,
                                                    tmp_path):
    """bigmem's buffer in a memfd mapped MAP_SHARED (fd closed): 64 MiB, each
    word checked (bench/memfd.py times it against anonymous memory)."""
    target = target_runner.start(build_target("bigmem"), "--mib", "64", "--memfd")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_memfd_images_need_the_memfd_plugin(build_target, target_runner, tmp_path):
    """--disable memfd: the set is refused before anything starts, naming
    the image and the plugin (no memfd comes back as something else)."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("memfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "-D", img, "--disable", "memfd")
    assert "memfd.img: needs memfd, provided by plugin memfd, which is disabled" in line, line
    assert task_gone(target.pid)
