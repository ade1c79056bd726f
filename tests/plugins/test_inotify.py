"""inotify: watches with their masks and wd numbers, a renamed file;
fanotify refused at dump; hostile images."""
import pytest

from engine.testing import dump_to


def _start(build_target, target_runner, tmp_path, *args, variant=None):
    watched = tmp_path / "watched-dir"
    watched.mkdir()
    return target_runner.start(build_target("inotify", variant), "--dir", str(watched), *args)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_inotify_watches(build_target, target_runner, dump_restore, tmp_path, variant):
    """A directory watch at wd 1, a file's IN_ONESHOT watch at wd 5 (the file
    renamed after), a second fd's IN_EXCL_UNLINK watch: events after restore
    come with those wds; the unread event is dropped."""
    target = _start(build_target, target_runner, tmp_path, "--unread", variant=variant)
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_renamed_again_before_restore(build_target, target_runner, dump_restore, tmp_path):
    """The watched file renamed once more between dump and restore: its
    handle still finds it."""
    from engine.testing import engine_cli
    target = _start(build_target, target_runner, tmp_path)
    img = tmp_path / "img"
    dump_to(target, img)
    d = tmp_path / "watched-dir"
    (d / "renamed").rename(d / "elsewhere")
    engine_cli("restore", "-D", img)
    # The target chmods "renamed": put it back, the watch is on the inode.
    (d / "elsewhere").rename(d / "renamed")
    assert target.verdict() == "PASS"


def test_fanotify_is_refused_at_dump(build_target, target_runner, engine_cli, tmp_path):
    """One line naming task, fd and why; the target runs on untouched."""
    from engine.testing import engine_fails
    target = _start(build_target, target_runner, tmp_path, "--fanotify")
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert f"task {target.pid}: fd " in line and "(anon_inode:[fanotify]): fanotify groups " \
        "are not supported" in line, line
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("change, want", [
    (lambda w: setattr(w, "mask", w.mask | 0x20000000),
     "wd 1: mask 0x20000300 holds unknown bits 0x20000000"),
    (lambda w: setattr(w, "ignored_mask", 0x4), "ignored_mask 0x4 (inotify has none)"),
    (lambda w: setattr(w.f_handle, "bytes", 200), "f_handle bytes 200 over 128"),
    (lambda w: setattr(w, "wd", 0), "wd 0 is below 1"),
])
def test_hostile_inotify_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                    change, want):
    """files.img edited with the protobuf classes: one line naming the image,
    the entry and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = _start(build_target, target_runner, tmp_path)
    img = tmp_path / "img"
    images = dump_to(target, img)
    files = images.read("files")
    victim = next(e for e in files if e.HasField("ify") and len(e.ify.wd) == 2)
    watch = next(w for w in victim.ify.wd if w.wd == 1)
    change(watch)
    images.write("files", files)
    line = engine_fails("restore", "-D", img)
    assert f"files.img: INOTIFY id {victim.id}: " in line and want in line, line
    assert task_gone(target.pid)


def test_disabled_plugin_refuses_the_image(build_target, target_runner, engine_cli, tmp_path):
    from engine.testing import engine_fails, task_gone
    target = _start(build_target, target_runner, tmp_path)
    img = tmp_path / "img"
    dump_to(target, img)
    line = engine_fails("restore", "--disable", "inotify", "-D", img)
    assert "file:INOTIFY" in line, line
    assert task_gone(target.pid)
