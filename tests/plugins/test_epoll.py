"""epoll: registrations with their flags and data, targets found by kcmp,
epoll in epoll, an epoll shared after fork, and images that must be refused."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_epoll_registrations(build_target, target_runner, dump_restore, tmp_path, variant):
    """ET/WAKEUP, a fired ONESHOT, EXCLUSIVE, a target re-numbered by dup2
    and an LT target left ready: each registration back, each reported."""
    target = target_runner.start(build_target("epoll", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_epoll_nested_and_shared(build_target, target_runner, dump_restore, tmp_path, variant):
    """An epoll inside an epoll, both shared with a child: one file each,
    registered once, the outer one ready through the inner one."""
    target = target_runner.start(build_target("epoll", variant), "--nested")
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_epoll_image_matches_fdinfo(build_target, target_runner, tmp_path):
    """files.img: the re-numbered target keeps its dumped fd (40) and names
    the file of fd 50; every tfd id is a file of the task's table."""
    target = target_runner.start(build_target("epoll"))
    images = dump_to(target, tmp_path / "img")
    files = {e.id: e for e in images.read("files")}
    epolls = [e for e in files.values() if e.HasField("epfd")]
    assert len(epolls) == 1 and len(epolls[0].epfd.tfd) == 5
    table = {}
    for name in (tmp_path / "img").glob("fdinfo-*.img"):
        table.update({fi.fd: fi.id for fi in images.read("fdinfo", id=int(name.stem[7:]))})
    by_data = {t.data: t for t in epolls[0].epfd.tfd}
    duped = by_data[0xD00D]
    assert duped.tfd == 40 and 40 not in table and duped.id == table[50]
    assert all(t.id == table[t.tfd] for t in epolls[0].epfd.tfd if t.tfd != 40)


def _spoil(files, how):
    epoll = next(e for e in files if e.HasField("epfd"))
    target = epoll.epfd.tfd[0]
    if how == "id":
        target.id = 9999
    else:
        target.events |= 1 << 20
    return epoll.id


@pytest.mark.parametrize("how, want", [
    ("id", "tfd 0 (fd {fd}): id 9999 is not in files.img"),
    ("events", "tfd 0 (fd {fd}): events {events:#x} has bits 0x100000 epoll does not define"),
])
def test_hostile_epoll_is_refused(build_target, target_runner, tmp_path, how, want):
    """files.img edited with the protobuf classes: one line naming files.img,
    the epoll and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("epoll"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    epoll_id = _spoil(files, how)
    images.write("files", files)
    first = next(e for e in files if e.HasField("epfd")).epfd.tfd[0]
    line = engine_fails("restore", "-D", img)
    assert f"files.img: EVENTPOLL id {epoll_id}: " in line, line
    assert want.format(fd=first.tfd, events=first.events) in line, line
    assert task_gone(target.pid)


def test_epoll_target_held_by_other_tasks(build_target, target_runner, dump_restore, tmp_path):
    """A pipe the epoll's task closed after registering it, held by two
    children: taken from the child that publishes it, reported when the
    child writes into it after restore."""
    target = target_runner.start(build_target("epoll"), "--remote", "2")
    # --verify sees the registration by the closed number 4 come back by 4,
    # although the task's channel to the engine sat there.
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_empty_epoll_in_flight(build_target, target_runner, dump_restore, tmp_path):
    """An epoll with no target, only in an SCM_RIGHTS queue: received after
    restore as an empty epoll."""
    target = target_runner.start(build_target("epoll"), "--inflight", "--empty")
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("args, want", [
    (("--remote", "1"), "is a file only task {kid} holds: task {pid}, which restores "
                        "the epoll, cannot reach it"),
    (("--orphan",), "is a file no longer in any fd of the tree"),
    (("--inflight",), "in-flight fd (anon_inode:[eventpoll]): an epoll with 1 registered "
                      "target(s) in an SCM_RIGHTS queue is not supported"),
    (("--sent",), "it is also in flight in an SCM_RIGHTS queue, with 1 registered "
                  "target(s): not supported"),
])
def test_epoll_dump_refuses(build_target, target_runner, engine_cli, tmp_path, args, want):
    """What could not come back is refused at dump, naming task, fd and
    target; the target runs on untouched."""
    from engine.testing import engine_fails
    target = target_runner.start(build_target("epoll"), *args)
    kids = open(f"/proc/{target.pid}/task/{target.pid}/children").read().split()
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert want.format(kid=kids[0] if kids else 0, pid=target.pid) in line, line
    if "--inflight" not in args:
        assert f"task {target.pid}: fd 3 (anon_inode:[eventpoll]): " in line, line
    assert target.verdict() == "PASS"


def test_epoll_as_criu_writes_it(build_target, target_runner, engine_cli, tmp_path):
    """CRIU 4.2 writes every tfd id as 0 and tfd as the fd of the epoll's
    task holding the target: such an image restores by those fds."""
    target = target_runner.start(build_target("epoll"), "--nested")
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    for entry in files:
        for t in entry.epfd.tfd if entry.HasField("epfd") else ():
            t.id = 0
    images.write("files", files)
    engine_cli("restore", "-D", img)
    assert target.verdict() == "PASS"
