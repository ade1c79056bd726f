"""files and fs, the harder cases: sparse ghosts with their times and the
ghost limit, ghosts whose directory is gone or taken, an O_PATH fd of a
symlink, a deleted cwd, a chroot, /proc/PID of a task gone, and tasks
sharing one fd table or fs struct."""
import json
import os
import subprocess

import pytest

from engine.testing import dump_to
from engine.testing.commands import engine_fails


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_sparse_ghost_keeps_holes_and_times(build_target, target_runner, dump_restore,
                                            engine_cli, tmp_path, variant):
    """A deleted 2 GiB file holding 1 MiB comes back with its holes, bytes,
    offset and mtime; its image costs the data, not the size. Deleted files
    whose directory was removed, or whose directory's name a file took,
    come back too (the file that took the name is left as it was)."""
    target = target_runner.start(build_target("ghostsparse", variant), "--data-kib", "1000")
    img = tmp_path / "img"
    assert dump_restore(target, img) == "PASS"
    ghosts = sorted(p.stat().st_size for p in img.glob("ghost-file-*.img"))
    assert len(ghosts) == 3 and ghosts[-1] < (1 << 20) + 8192, ghosts
    # CRIU's own decoder reads the chunks
    for path in img.glob("ghost-file-*.img"):
        out = subprocess.run(["crit", "decode", "-i", str(path)], capture_output=True,
                             text=True, check=True)
        head, *chunks = json.loads(out.stdout)["entries"]
        assert head["chunks"] and chunks and all("off" in c for c in chunks), head
    shown = json.loads(engine_cli("show", img).stdout)
    for name in (p.name for p in img.glob("ghost-file-*.img")):
        head, *chunks = shown[name]["entries"]
        assert head["chunks"] and all(c["payload_bytes"] == int(c["len"]) for c in chunks)


def test_ghost_limit(build_target, target_runner, dump_restore, tmp_path):
    """Over CRIU's default limit (1 MiB of data) the dump is refused in one
    line naming --ghost-limit, the target left running; --ghost-limit 3M
    dumps it."""
    target = target_runner.start(build_target("ghostsparse"), "--data-kib", "2048")
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "refused")
    assert f"task {target.pid}" in line and "--ghost-limit" in line, line
    os.kill(target.pid, 0)
    assert dump_restore(target, tmp_path / "img", dump_args=("--ghost-limit", "3M")) == "PASS"


def test_criu_shim_passes_ghost_limit():
    from engine import criu_cli
    args = criu_cli._parser().parse_args(["dump", "-D", "/x", "-t", "1", "--ghost-limit", "5M"])
    assert args.ghost_limit == "5M"


def test_rpc_ghost_limit_maps_to_the_option():
    from engine.images.proto import rpc_pb2
    from engine.rpc.options import to_argv
    opts = rpc_pb2.criu_opts(images_dir_fd=-1, ghost_limit=5 << 20)
    assert to_argv(opts, "dump", "/x", []) == ["-D", "/x", "--ghost-limit", str(5 << 20)]
    assert to_argv(rpc_pb2.criu_opts(images_dir_fd=-1), "dump", "/x", []) == ["-D", "/x"]


def test_hostile_ghost_chunks_are_refused(build_target, target_runner, engine_cli, tmp_path):
    """A chunk past the size, or overlapping the one before: refused in one
    line naming the ghost image and the entry, nothing started."""
    from engine.images import ImageDir
    from engine.testing import task_gone
    target = target_runner.start(build_target("ghostsparse"), "--data-kib", "64")
    img = tmp_path / "img"
    dump_to(target, img)
    images = ImageDir(img)
    sizes = {i: len(images.read("ghost-file", id=i)) for i in images.ids("ghost-file")}
    ghost_id = max(sizes, key=sizes.get)
    path = img / f"ghost-file-{ghost_id}.img"
    good = path.read_bytes()
    for spoil in ("past", "overlap"):
        path.write_bytes(good)
        g, *chunks = images.read("ghost-file", id=ghost_id)
        if spoil == "past":
            chunks[-1][0].off = g.size
        else:
            chunks[1][0].off = chunks[0][0].off
        images.write("ghost-file", [g, *chunks], id=ghost_id)
        line = engine_fails("restore", "-D", img)
        assert f"ghost-file-{ghost_id}.img: entry" in line, line
        assert task_gone(target.pid)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
@pytest.mark.parametrize("case", ["symlink", "cwd-deleted"])
def test_symlink_fd_and_deleted_cwd(build_target, target_runner, dump_restore, tmp_path,
                                    variant, case):
    """An O_PATH|O_NOFOLLOW fd of a symlink comes back as the link itself; a
    deleted cwd comes back deleted, with its name and mode (a ghost
    directory, made again and removed)."""
    target = target_runner.start(build_target("fsodd", variant), "--case", case)
    assert dump_restore(target, tmp_path / "img") == "PASS"


@pytest.mark.parametrize("case, want", [
    ("proc-gone", "is gone"),
    ("chroot", "root {dir} is not / (chroot)"),
])
def test_refused_at_dump(build_target, target_runner, tmp_path, case, want):
    """A chroot, and an fd of a /proc/PID directory whose task is gone:
    the dump is refused in one line naming the task and the state, the
    target left running."""
    target = target_runner.start(build_target("fsodd"), "--case", case)
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert f"task {target.pid}" in line and want.format(dir=target.workdir) in line, line
    os.kill(target.pid, 0)


@pytest.mark.parametrize("share, want", [
    ("files", "shares its fd table with task {pid} (CLONE_FILES)"),
    ("fs", "shares its cwd, root and umask with task {pid} (CLONE_FS)"),
])
def test_shared_fd_table_or_fs_refused(build_target, target_runner, tmp_path, share, want):
    """A child cloned with CLONE_FILES or CLONE_FS: the dump is refused in
    one line naming both tasks and the flag; the tree runs on and passes."""
    target = target_runner.start(build_target("sharefs"), "--share", share)
    line = engine_fails("dump", "-t", target.pid, "-D", tmp_path / "img")
    assert want.format(pid=target.pid) in line, line
    assert target.verdict() == "PASS"


def test_threads_still_share_everything(build_target, target_runner, dump_restore, tmp_path):
    """Threads share their fd table and fs struct always: still dumped."""
    target = target_runner.start(build_target("threads"))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_hostile_ghost_directory_is_refused(build_target, target_runner, tmp_path):
    """A deleted cwd's ghost directory edited to a device, or given chunks:
    refused in one line naming the ghost image, nothing started."""
    from engine.images import ImageDir
    from engine.testing import task_gone
    target = target_runner.start(build_target("fsodd"), "--case", "cwd-deleted")
    img = tmp_path / "img"
    dump_to(target, img)
    images = ImageDir(img)
    (ghost_id,) = images.ids("ghost-file")
    path = img / f"ghost-file-{ghost_id}.img"
    good = path.read_bytes()
    for spoil in ("device", "chunks"):
        path.write_bytes(good)
        (g,) = images.read("ghost-file", id=ghost_id)
        if spoil == "device":
            g.mode = 0o20644
        else:
            g.chunks, g.size = True, 0
        images.write("ghost-file", [g], id=ghost_id)
        line = engine_fails("restore", "-D", img)
        assert f"ghost-file-{ghost_id}.img: mode" in line, line
        assert task_gone(target.pid)


def test_criu_unchunked_ghost_restores(build_target, target_runner, dump_restore, tmp_path):
    """CRIU writes a ghost without holes unchunked (its bytes after the
    entry, no size): such an image restores, content and offset kept."""
    from engine.images import ImageDir
    from engine.images.framing import U32
    from engine.images.kinds import IMG_COMMON_MAGIC
    target = target_runner.start(build_target("ghost"))
    img = tmp_path / "img"
    dump_to(target, img)
    images = ImageDir(img)
    (ghost_id,) = images.ids("ghost-file")
    g, (chunk, data) = images.read("ghost-file", id=ghost_id)
    assert chunk.off == 0 and data.startswith(b"0123456789abcdef")
    g.ClearField("chunks")
    g.ClearField("size")
    body = g.SerializeToString()
    (img / f"ghost-file-{ghost_id}.img").write_bytes(
        U32.pack(IMG_COMMON_MAGIC) + U32.pack(0x52583605) + U32.pack(len(body)) + body + data)
    out = subprocess.run(["crit", "decode", "-i", str(img / f"ghost-file-{ghost_id}.img")],
                         capture_output=True, text=True, check=True)
    assert "extra" in json.loads(out.stdout)["entries"][0]     # as CRIU's own
    from engine.images import manifest
    manifest.note(str(img), f"ghost-file-{ghost_id}.img")     # written as by a tool
    from engine.testing import engine_cli
    engine_cli("restore", "-D", img, "--verify")
    assert target.verdict() == "PASS"
