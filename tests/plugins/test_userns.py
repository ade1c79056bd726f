"""userns: user namespaces with their maps, setgroups and the credentials
of the tasks inside them survive a restore; bad maps are refused first."""
import pytest

from engine.images import ImageDir
from engine.testing import dump_to, engine_fails, task_gone


def test_nested_user_namespaces_maps_and_credentials(build_target, target_runner,
                                                     dump_restore, tmp_path):
    target = target_runner.start(build_target("userns"))
    assert dump_restore(target, tmp_path / "img") == "PASS", target.log()


def test_userns_images(build_target, target_runner, engine_cli, tmp_path):
    target = target_runner.start(build_target("userns"))
    img = tmp_path / "img"
    dump_to(target, img)
    images = ImageDir(str(img))
    ids = {k: images.read_one("ids", id=target.addr(k)).user_ns_id for k in ("a", "a1", "a2", "b")}
    assert ids["a"] == ids["a2"] and len({ids["a"], ids["a1"], ids["b"]}) == 3
    a, a1, b = (images.read_one("userns", id=ids[k]) for k in ("a", "a1", "b"))
    assert (a.parent_id, a1.parent_id, b.parent_id) == (0, ids["a"], 0)
    # Maps as the parent sees them: A1's lower ids are A's, not the engine's.
    assert [(e.first, e.lower_first, e.count) for e in a1.uid_map] == [(0, 500, 100)]
    assert [(e.first, e.lower_first, e.count) for e in a.gid_map] == [(0, 200000, 65536)]
    assert b.setgroups_deny and not a.setgroups_deny


def _spoil(img, ns_id, edit):
    images = ImageDir(str(img))
    entry = images.read_one("userns", id=ns_id)
    edit(entry)
    images.write("userns", [entry], id=ns_id)


@pytest.mark.parametrize("edit, words", [
    (lambda e: e.uid_map.add(first=100, lower_first=900000, count=10), "overlap (ids inside)"),
    (lambda e: e.gid_map.add(first=70000, lower_first=200010, count=5), "overlap (ids outside)"),
    (lambda e: [e.uid_map.add(first=70000 + i, lower_first=400000 + i, count=1)
                for i in range(340)], "341 lines"),
    (lambda e: e.uid_map.add(first=70000, lower_first=4294967295, count=1),
     "does not hold"),
    (lambda e: setattr(e, "parent_id", 999), "parent_id"),
], ids=["overlap-inside", "overlap-outside", "too-many-lines", "unheld-ids", "no-parent"])
def test_bad_maps_are_refused_before_anything_starts(build_target, target_runner, engine_cli,
                                                      tmp_path, edit, words):
    target = target_runner.start(build_target("userns"))
    img = tmp_path / "img"
    dump_to(target, img)
    ns_id = ImageDir(str(img)).read_one("ids", id=target.addr("a")).user_ns_id
    _spoil(img, ns_id, edit)
    line = engine_fails("restore", "-D", img)
    assert f"userns-{ns_id}.img" in line and words in line, line
    for key in ("a", "a1", "a2", "b"):
        assert task_gone(target.addr(key))
    assert task_gone(target.pid)


def test_nested_map_beyond_its_parent_is_refused(build_target, target_runner, engine_cli,
                                                 tmp_path):
    target = target_runner.start(build_target("userns"))
    img = tmp_path / "img"
    dump_to(target, img)
    ns_id = ImageDir(str(img)).read_one("ids", id=target.addr("a1")).user_ns_id
    _spoil(img, ns_id, lambda e: e.uid_map.add(first=100, lower_first=70000, count=1))
    line = engine_fails("restore", "-D", img)
    assert f"userns-{ns_id}.img: uid_map: line 1" in line and "its parent" in line, line
    assert task_gone(target.pid)
