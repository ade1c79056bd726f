"""tty: pty pairs, the controlling terminal of a session, /dev/tty, and
tty images that must be refused."""
import os

import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_pty_pair_and_controlling_terminal(build_target, target_runner, dump_restore, tmp_path,
                                           variant):
    """Master with packet mode and the lock, a session leader's controlling
    terminal with its foreground group, /dev/tty, termios, window size,
    exclusive mode and the bytes the master had not read."""
    target = target_runner.start(build_target("tty", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def _spoil(images, how):
    infos = images.read("tty-info")
    files = images.read("files")
    if how == "index over kernel.pty.max":
        infos[0].pty.index = 1 << 30
    elif how == "c_cc too long":
        infos[0].termios.c_cc.extend([0] * 30)
    elif how == "a console":
        infos[0].type = 2                      # CONSOLE
    elif how == "info id naming nothing":
        next(f for f in files if f.HasField("tty")).tty.tty_info_id = 12345
    elif how == "data for no pty":
        from engine.images.proto import tty_pb2
        images.write("tty-data", [tty_pb2.tty_data_entry(tty_id=4242, data=b"x")])
    elif how == "master opened by another path":
        master = next(f for f in files if f.HasField("tty") and f.tty.tty_info_id % 2)
        next(f for f in files if f.id == master.tty.regf_id).reg.name = "/etc/passwd"
    images.write("tty-info", infos)
    images.write("files", files)


@pytest.mark.parametrize("how, want", [
    ("index over kernel.pty.max", "tty-info.img: entry 0 (id 0): pty index 1073741824"),
    ("c_cc too long", "termios.c_cc has 49 values"),
    ("a console", "type 2: only ptys and /dev/tty are restored"),
    ("info id naming nothing", "tty_info_id 12345 is not in tty-info.img"),
    ("data for no pty", "tty-data.img: entry 0: tty_id 4242 names no pty slave"),
    ("master opened by another path", "master opened as '/etc/passwd', not /dev/ptmx"),
])
def test_hostile_tty_images_are_refused(build_target, target_runner, tmp_path, how, want):
    """One line naming the image and the field; no task left."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("tty"))
    img = tmp_path / "img"
    _spoil(dump_to(target, img), how)
    line = engine_fails("restore", "-D", img)
    assert want in line, line
    assert task_gone(target.pid)


def test_pty_index_in_use_fails_cleanly(build_target, target_runner, tmp_path):
    """The dumped pty's index held by someone else at restore: one line, no
    task left (the indexes it opened on the way are let go)."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("tty"))
    index = int(target.info["pty"])
    dump_to(target, tmp_path / "img")
    held = []
    try:
        while True:
            fd = os.open("/dev/ptmx", os.O_RDWR | os.O_NOCTTY)
            held.append(fd)
            import fcntl
            import struct
            got = struct.unpack("i", fcntl.ioctl(fd, 0x80045430, bytes(4)))[0]
            if got >= index:
                break
        assert got == index, f"got pty {got}, wanted {index}"
        line = engine_fails("restore", "-D", tmp_path / "img")
        assert f"pty {index}: /dev/pts/{index} is in use" in line, line
        assert task_gone(target.pid)
    finally:
        for fd in held:
            os.close(fd)
