"""pidns: nested pid namespaces come back with every task's pid at every
level (NSpid), also when nested user namespaces own them (CRIU cannot)."""
import pytest

from engine.testing import dump_to, engine_fails, task_gone


@pytest.mark.parametrize("user", [False, True], ids=["owned-by-init", "owned-by-nested-userns"])
def test_nested_pid_namespaces_keep_nspid(build_target, target_runner, dump_restore, tmp_path,
                                          user):
    args = ["--user", "1"] if user else []
    target = target_runner.start(build_target("pidns"), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS", target.log()


def _dumped(build_target, target_runner, engine_cli, tmp_path):
    target = target_runner.start(build_target("pidns"), "--user", "1")
    img = tmp_path / "img"
    images = dump_to(target, img)
    pids = [e.pid for e in images.read("pstree")]
    return target, img, images, pids


def test_pidns_images(build_target, target_runner, engine_cli, tmp_path):
    target, img, images, pids = _dumped(build_target, target_runner, engine_cli, tmp_path)
    root, a, a1, b1, b2 = pids
    p1 = images.read_one("ids", id=a1).pid_ns_id
    p2 = images.read_one("ids", id=b1).pid_ns_id
    e1, e2 = images.read_one("pidns", id=p1), images.read_one("pidns", id=p2)
    assert (e1.parent_id, e2.parent_id) == (0, p1)
    assert e1.owner_id == images.read_one("ids", id=a).user_ns_id
    assert e2.owner_id == images.read_one("ids", id=a1).user_ns_id
    assert [list(t.ns_pid) for t in e1.tasks] == [[a1, 1]]
    assert sorted(list(t.ns_pid)[2] for t in e2.tasks) == [1, 2]


@pytest.mark.parametrize("edit, words", [
    (lambda e: e.tasks[0].ns_pid.append(7), "levels"),
    (lambda e: (setattr(e.tasks[0], "pid", 31999), e.tasks[0].ns_pid.__setitem__(0, 31999)),
     "not in pstree.img"),
    (lambda e: setattr(e, "parent_id", 4242), "parent_id"),
], ids=["too-many-levels", "unknown-task", "no-parent"])
def test_bad_pidns_images_are_refused_before_anything_starts(build_target, target_runner,
                                                             engine_cli, tmp_path, edit, words):
    target, img, images, pids = _dumped(build_target, target_runner, engine_cli, tmp_path)
    p2 = images.read_one("ids", id=pids[3]).pid_ns_id
    entry = images.read_one("pidns", id=p2)
    edit(entry)
    images.write("pidns", [entry], id=p2)
    line = engine_fails("restore", "-D", img)
    assert "pidns-" in line and words in line, line
    assert all(task_gone(p) for p in pids)
