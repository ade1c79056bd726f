"""pidfd: of a running, a zombie and a reaped child, PIDFD_NONBLOCK,
PIDFD_THREAD; refusals at dump; hostile images."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_pidfds_of_children(build_target, target_runner, dump_restore, tmp_path, variant):
    """A running child still answers signal 0 and its death reaches
    waitid(P_PIDFD); the zombie's exit 7 too; the reaped one gives ESRCH;
    PIDFD_NONBLOCK and PIDFD_THREAD come back in the flags."""
    target = target_runner.start(build_target("pidfd", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("arg, want", [
    ("--outside", "which is outside the dumped tree"),
    ("--thread", "not its group leader"),
])
def test_dump_refuses(build_target, target_runner, engine_cli, tmp_path, arg, want):
    """A pidfd of our parent (outside the tree) or of a second thread: one
    line naming task, fd and pid; the target runs on untouched."""
    from engine.testing import engine_fails
    target = target_runner.start(build_target("pidfd"), arg)
    fd = target.info["extra_fd"]
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert f"task {target.pid}: fd {fd} (anon_inode:[pidfd]): names " in line, line
    assert want in line, line
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("field, value, want", [
    ("nspid", 31337, "nspid 31337 is not a task in pstree.img"),
    ("flags", 0o4000 | 0o100, "flags 0o4100 hold unknown bits 0o100"),
])
def test_hostile_pidfd_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                  field, value, want):
    """files.img edited with the protobuf classes: one line naming the image,
    the entry and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("pidfd"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = next(e for e in files if e.HasField("pidfd") and e.pidfd.nspid != -1)
    setattr(victim.pidfd, field, value)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: PIDFD id {victim.id}: {want}" in line, line
    assert task_gone(target.pid)


def test_disabled_plugin_refuses_the_image(build_target, target_runner, engine_cli, tmp_path):
    """--disable pidfd: an image holding pidfds is refused before anything
    starts, naming the resource; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("pidfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "--disable", "pidfd", "-D", img)
    assert "file:PIDFD" in line, line
    assert task_gone(target.pid)
