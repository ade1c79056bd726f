"""The dump's write order: every image first, inventory.img (the completion
marker a reader trusts) last, filled through engine_dump_inventory."""
import json
import os
import struct
import subprocess

from engine.testing import dump_to

IN_CLOSE_WRITE = 0x8
IN_NONBLOCK = 0o4000


def _closed_for_writing(fd: int) -> list[str]:
    """Names of the files the inotify instance at `fd` saw closed after a
    write, in the order the kernel queued the events."""
    names, buf = [], b""
    while True:
        try:
            buf += os.read(fd, 1 << 16)
        except BlockingIOError:
            break
    while buf:
        _, mask, _, size = struct.unpack_from("iIII", buf)
        name = buf[16:16 + size].rstrip(b"\0").decode()
        if mask & IN_CLOSE_WRITE:
            names.append(name)
        buf = buf[16 + size:]
    return names


def test_hook_engine_dump_inventory(build_target, target_runner, tmp_path):
    """inventory.img is written once no other image will be, and the core's
    engine_dump_inventory gave it the root's ids (those of ids-ROOT.img)."""
    from engine import libc
    target = target_runner.start(build_target("sharedfd"))
    img = tmp_path / "img"
    img.mkdir()
    fd = libc.inotify_init1(IN_NONBLOCK)
    libc.check(fd, "inotify_init1")
    try:
        libc.check(libc.inotify_add_watch(fd, os.fsencode(img), IN_CLOSE_WRITE),
                   "inotify_add_watch")
        dump_to(target, img)
        order = _closed_for_writing(fd)
    finally:
        os.close(fd)
    assert order[-1] == "inventory.img", order
    assert {"files.img", "pstree.img", f"core-{target.pid}.img"} <= set(order[:-1])

    def decode(name):
        out = subprocess.run(["crit", "decode", "-i", str(img / name)], capture_output=True,
                             text=True, check=True).stdout
        return json.loads(out)["entries"][0]
    inventory, ids = decode("inventory.img"), decode(f"ids-{target.pid}.img")
    assert inventory["img_version"] == 2
    assert inventory["root_ids"] == ids
