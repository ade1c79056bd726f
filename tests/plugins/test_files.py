"""files and fs: fd table, offsets, O_APPEND, cloexec, /dev/null, cwd."""
from pathlib import Path

import pytest

from engine.testing import dump_to


def test_hook_engine_dump_fd(build_target, target_runner, dump_restore, tmp_path):
    """Regular files, a dup sharing the offset, O_APPEND, /dev/null, cloexec
    and the cwd all come back (claimed by engine_dump_fd, reopened by
    engine_restore_file); the target checks each."""
    target = target_runner.start(build_target("files"))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_hook_engine_restore_file(build_target, target_runner, engine_cli, tmp_path):
    """A file whose size changed since the dump is refused, naming it."""
    target = target_runner.start(build_target("files"))
    img = tmp_path / "img"
    dump_to(target, img)
    data = [p for p in target.workdir.iterdir() if p.name.startswith("data")]
    assert data, list(target.workdir.iterdir())
    with open(data[0], "ab") as f:
        f.write(b"grown")
    proc = engine_cli("restore", "-D", img, check=False)
    assert proc.returncode != 0
    assert "files.img" in proc.stderr and "size changed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_failed_dump_leaves_the_target_running(engine_cli, tmp_path):
    """An fd no plugin can dump (here a UDP-Lite socket) fails the dump with
    one line; the tree runs on untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time
    code = ("import os, socket, time\n"
            "a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM, 136)\n"   # IPPROTO_UDPLITE
            "if os.fork() == 0:\n"
            "    time.sleep(60)\nelse:\n    time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        time.sleep(0.3)
        out = engine_cli("dump", "-t", proc.pid, "-D", tmp_path / "img", check=False)
        assert out.returncode != 0 and "no plugin can dump it" in out.stderr
        assert len(out.stderr.strip().splitlines()) == 1
        state = open(f"/proc/{proc.pid}/stat").read().rsplit(")", 1)[1].split()[0]
        assert state == "S", "the target must run on after a failed dump"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_open_file_and_pipe_shared_with_a_child(build_target, target_runner, dump_restore,
                                                tmp_path, variant):
    target = target_runner.start(build_target("sharedfd", variant))
    assert dump_restore(target, tmp_path) == "PASS"


def test_tables_taking_a_shared_file_come_after_its_maker(build_target, target_runner,
                                                         engine_cli, tmp_path):
    """Tables of different tasks may run at once: one that takes an open file
    (or pipe) another task makes is ordered after that task's table."""
    target = target_runner.start(build_target("sharedfd"))
    img = tmp_path / "img"
    dump_to(target, img)
    tree = engine_cli("plan", "-D", img, "--tree").stdout.split("\n\n", 1)[1].splitlines()
    tables = [i for i, line in enumerate(tree) if line.startswith("fd table of ")]
    assert len(tables) == 2, tree
    first, second = (tree[i].split()[3] for i in tables)

    def edges(i):                    # the indented lines under node line i
        out = []
        for line in tree[i + 1:]:
            if not line.startswith("    "):
                break
            out.append(line)
        return out
    # The edge says where it came from: the table's own ("file", id) pair.
    assert any(line.startswith(f"    after fd table of {first} ")
               and "(node: after ('file', " in line for line in edges(tables[1])), tree
    assert first != second
    assert not any("after fd table" in line for line in edges(tables[0])), tree


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_file_deleted_while_open(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("ghost", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"
    assert (tmp_path / "img" / "remap-fpath.img").exists()


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_named_fifo_with_reader_writer_and_bytes(build_target, target_runner, dump_restore,
                                                 tmp_path, variant):
    target = target_runner.start(build_target("fifo", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_o_path_and_directory_fds(build_target, target_runner, dump_restore, tmp_path, variant):
    target = target_runner.start(build_target("opath", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_file_and_its_directory_renamed_after_open(build_target, target_runner, dump_restore,
                                                   tmp_path, variant):
    """/proc shows the new names; the dump takes them (as CRIU does) and the
    restore opens the file at its new name, at its offset."""
    target = target_runner.start(build_target("renamed", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("change", ["gone", "renamed again", "directory renamed",
                                    "mode changed"])
def test_renamed_file_missing_or_changed_at_restore(build_target, target_runner, engine_cli,
                                                    tmp_path, change):
    """The dumped (new) path gone or changed at restore: one line naming
    files.img, the file id and the path; non-zero exit; nothing left running."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("renamed"))
    img = tmp_path / "img"
    dump_to(target, img)
    top, inner = Path(target.info["top"]), Path(target.info["inner"])
    if change == "gone":
        top.unlink()
        want = f"({top}): No such file or directory"
    elif change == "renamed again":
        top.rename(top.with_name("newer.txt"))
        want = f"({top}): No such file or directory"
    elif change == "directory renamed":
        inner.parent.rename(inner.parent.with_name("dir_c"))
        want = f"({inner}): No such file or directory"
    else:
        top.chmod(0o600)
        want = f"({top}): mode changed: 100640 -> 100600"
    line = engine_fails("restore", "-D", img)
    assert "error: files.img: file id " in line and line.endswith(want), line
    assert task_gone(target.pid), "a failed restore left the task behind"


def _edit(images, how):
    fdinfo_id = next(int(p.name[7:-4]) for p in Path(images.dir).glob("fdinfo-*.img"))
    fds = images.read("fdinfo", id=fdinfo_id)
    files = images.read("files")
    data = next(e for e in files if e.HasField("reg") and e.reg.name.endswith("/new.txt"))
    if how == "fd used twice":
        fds.append(fds[-1])
    elif how == "fd over the limit":
        fds[-1].fd = 0x7FFFFFFF
    elif how == "type changed":
        fds[-1].type = 2                    # PIPE
    elif how == "O_TRUNC":
        data.reg.flags |= 0o1000
    elif how == "offset past 2^63":
        data.reg.pos = (1 << 64) - 1
    elif how == "fown pid_type 7":
        data.reg.fown.pid_type, data.reg.fown.pid = 7, 1
    elif how == "fown pid nobody has":
        data.reg.fown.pid_type, data.reg.fown.pid = 1, 0x3FFFFFFF
    images.write("fdinfo", fds, id=fdinfo_id)
    images.write("files", files)


@pytest.mark.parametrize("how, want", [
    ("fd used twice", r"fdinfo-\d+\.img: entry \d+: fd \d+: used twice"),
    ("fd over the limit", r"fdinfo-\d+\.img: entry \d+: fd 2147483647: over the open files"),
    ("type changed", r"fdinfo-\d+\.img: entry \d+: fd \d+: type 2 but file id \d+ in "
                     r"files\.img is REG"),
    ("O_TRUNC", r"files\.img: file id \d+ \(.*/new\.txt\): flags 0o\d+ hold open-time "
                r"flags 0o1000"),
    ("offset past 2^63", r"files\.img: file id \d+ \(.*/new\.txt\): pos 18446744073709551615 "
                         r"is over the largest offset"),
    ("fown pid_type 7", r"files\.img: file id \d+: fown \(pid_type 7, pid 1, .*\): "
                        r"Invalid argument"),
    ("fown pid nobody has", r"files\.img: file id \d+: fown \(pid_type 1, pid 1073741823, "
                            r".*\): No such process"),
])
def test_hostile_fd_images_are_refused(build_target, target_runner, engine_cli, tmp_path,
                                       how, want):
    """files.img / fdinfo edited with the protobuf classes: one line naming the
    image, the entry and the field (before any task exists, or from the
    fcntl that refused the value); the file an O_TRUNC would have emptied is
    untouched; no task is left."""
    import re
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("renamed"))
    img = tmp_path / "img"
    _edit(dump_to(target, img), how)
    line = engine_fails("restore", "-D", img)
    assert re.search(want, line), line
    assert task_gone(target.pid)
    assert Path(target.info["top"]).stat().st_size == 20


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_file_owners_for_sigio(build_target, target_runner, dump_restore, tmp_path, variant):
    """F_SETOWN_EX / F_SETSIG / O_ASYNC come back through fcntl, and the
    owner's uids are set as the dumped ones (setresuid around F_SETOWN_EX, as
    criu/files.c restore_fown), not the restoring root's."""
    target = target_runner.start(build_target("fown", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_files_deleted_while_mapped(build_target, target_runner, dump_restore, tmp_path,
                                    variant):
    """Mapped shared (with a child) and private, and one mapped twice as a
    library is, all deleted, no fd held: each comes back from its ghost,
    still deleted, every mapping of one file one inode."""
    target = target_runner.start(build_target("mapdeleted", variant))
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    assert len(list(img.glob("ghost-file-*.img"))) == 2          # one per inode


def test_deleted_file_mapped_and_held_open_is_refused(build_target, target_runner, tmp_path):
    """Its fd's ghost and its mappings' would be two inodes: refused at dump,
    naming the task, the fd and the file; the target runs on untouched."""
    from engine.testing import engine_fails
    target = target_runner.start(build_target("mapdeleted"), "--also-open")
    line = engine_fails("dump", "-t", str(target.pid), "-D", tmp_path / "img")
    assert f"task {target.pid}: fd " in line and ".mapped (deleted): a deleted file both " \
        "mapped and held open" in line, line
    assert target.verdict() == "PASS"
