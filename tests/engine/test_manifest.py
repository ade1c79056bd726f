"""engine-images.json: an image set cut, short of a file or with one too
many is refused before anything starts, naming the file (issue 20)."""
import os

from engine.images import framing
from engine.testing import dump_to, engine_fails, task_gone


def _dump(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("files"))
    img = tmp_path / "img"
    return target, img, dump_to(target, img)


def test_an_image_cut_at_an_entry_boundary_is_refused(build_target, target_runner, tmp_path):
    """An fd table short of its last entry still parses: only the sizes the
    dump wrote tell it was cut."""
    target, img, images = _dump(build_target, target_runner, tmp_path)
    files_id = images.ids("fdinfo")[0]
    entries = images.read("fdinfo", id=files_id)
    path = images.path("fdinfo", id=files_id)
    framing.write_entries(path, images.kinds.get("fdinfo"), entries[:-1])   # not ImageDir.write
    line = engine_fails("restore", "-D", img)
    assert line.endswith(f"fdinfo-{files_id}.img: {os.path.getsize(path)} bytes, but the dump "
                         f"wrote {os.path.getsize(path) + _entry_size(entries[-1])}: "
                         "cut or changed since"), line
    assert task_gone(target.pid)


def _entry_size(entry) -> int:
    return 4 + entry.ByteSize()


def test_a_missing_image_is_refused(build_target, target_runner, tmp_path):
    """cpuinfo.img gone would skip the CPU check; fs-PID.img gone, a task's cwd."""
    target, img, images = _dump(build_target, target_runner, tmp_path)
    size = os.path.getsize(img / "cpuinfo.img")
    os.unlink(img / "cpuinfo.img")
    line = engine_fails("restore", "-D", img)
    assert line.endswith(f"cpuinfo.img: missing: the dump wrote it ({size} bytes)"), line
    assert task_gone(target.pid)


def test_an_image_the_dump_did_not_write_is_refused(build_target, target_runner, tmp_path):
    target, img, images = _dump(build_target, target_runner, tmp_path)
    (img / "core-4242.img").write_bytes((img / f"core-{target.pid}.img").read_bytes())
    line = engine_fails("restore", "-D", img)
    assert line.endswith("core-4242.img: not written by the dump (engine-images.json does "
                         "not list it)"), line


def test_an_image_rewritten_by_the_engines_writer_is_taken(build_target, target_runner,
                                                            dump_restore, tmp_path):
    """Tools (and the hostile-image tests) rewrite images through ImageDir:
    the set stays whole."""
    from engine.testing import engine_cli
    target, img, images = _dump(build_target, target_runner, tmp_path)
    files_id = images.ids("fdinfo")[0]
    entries = images.read("fdinfo", id=files_id)
    images.write("fdinfo", entries + [], id=files_id)
    engine_cli("restore", "-D", img, "--verify")
    assert target.verdict() == "PASS"
