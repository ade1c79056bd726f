"""mem: VMAs and pages, big and small, and bad memory images."""
import shutil

import pytest


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_256_mib_pattern_heap_and_stack(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("bigmem", variant), "--mib", "256")
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.fixture
def dumped_counter(build_target, target_runner, engine_cli, tmp_path):
    """A counter dumped to tmp_path/img (killed and reaped): images to spoil."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    engine_cli("dump", "-t", target.pid, "-D", img)
    target.reap()
    return target, img


def _restore_fails(engine_cli, img, pid, *needles):
    proc = engine_cli("restore", "-D", img, check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    for needle in needles:
        assert needle in lines[0]
    assert not _alive(pid), "a failed restore left the task behind"
    return lines[0]


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_missing_pages_file_is_refused(dumped_counter, engine_cli):
    target, img = dumped_counter
    for pages in img.glob("pages-*.img"):
        pages.unlink()
    _restore_fails(engine_cli, img, target.pid, "pages-")


def test_vma_outside_user_space_is_refused(dumped_counter, engine_cli):
    from engine.images import ImageDir
    target, img = dumped_counter
    images = ImageDir(str(img))
    mm = images.read_one("mm", id=target.pid)
    mm.vmas[0].start, mm.vmas[0].end = 0xFFFF800000000000, 0xFFFF800000001000
    images.write("mm", [mm], id=target.pid)
    _restore_fails(engine_cli, img, target.pid, f"mm-{target.pid}.img", "outside user space")


def test_truncated_pages_file_is_refused(dumped_counter, engine_cli):
    target, img = dumped_counter
    pages = next(img.glob("pages-*.img"))
    with open(pages, "r+b") as f:
        f.truncate(pages.stat().st_size // 2)
    _restore_fails(engine_cli, img, target.pid, "pages-")


def test_restore_twice_is_refused_while_the_pid_is_in_use(dumped_counter, engine_cli, tmp_path):
    target, img = dumped_counter
    copy = tmp_path / "copy"
    shutil.copytree(img, copy)
    engine_cli("restore", "-D", img)
    line = _restore_fails_keep_alive(engine_cli, copy)
    assert "pstree.img" in line and f"pid {target.pid} is in use" in line
    assert target.verdict() == "PASS"


def _restore_fails_keep_alive(engine_cli, img):
    proc = engine_cli("restore", "-D", img, check=False)
    assert proc.returncode != 0
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    return proc.stderr.strip()
