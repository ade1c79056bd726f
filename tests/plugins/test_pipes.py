"""pipes: ends gone, buffer sizes, and images that must be refused."""
import pytest

from engine.testing import dump_to


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_pipe_ends_gone_and_buffer_sizes(build_target, target_runner, dump_restore, tmp_path,
                                         variant):
    """Writer gone: bytes then EOF; reader gone: EPIPE; F_SETPIPE_SZ kept."""
    target = target_runner.start(build_target("pipeends", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def _edit_pipes_data(entries, how):
    big = max(entries, key=lambda e: len(e[1]))[0]
    if how == "size over pipe-max-size":
        big.size = 2 * int(open("/proc/sys/fs/pipe-max-size").read())
    elif how == "size -1":
        big.size = 0xFFFFFFFF
    elif how == "more bytes than the size":
        big.size = 4096
    elif how == "bytes past the end":
        big.bytes = 0xFFFFFFFF
    else:
        entries.append(entries[0])


@pytest.mark.parametrize("how, want", [
    ("size over pipe-max-size", "size 2097152 is over /proc/sys/fs/pipe-max-size (1048576)"),
    ("size -1", "size 4294967295 is over /proc/sys/fs/pipe-max-size"),
    ("more bytes than the size", "bytes 204800 do not fit in a pipe of 4096 bytes"),
    ("bytes past the end", "bytes=4294967295: payload truncated"),
    ("two entries for one pipe", "a second entry for the same pipe"),
])
def test_hostile_pipes_data_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                       how, want):
    """pipes-data.img edited with the protobuf classes: one line naming the
    image, the entry and the field; no task left. (As root, F_SETPIPE_SZ would
    pass pipe-max-size: the image must not get around it.)"""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("pipeends"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    entries = images.read("pipes-data")
    _edit_pipes_data(entries, how)
    images.write("pipes-data", entries)
    line = engine_fails("restore", "-D", img)
    assert "pipes-data.img: entry " in line and want in line, line
    assert task_gone(target.pid)


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_dense_fd_table_of_pipes_and_files(build_target, target_runner, dump_restore, tmp_path,
                                           variant):
    """Pipe ends and files interleaved with no free fd between them, shared
    with a child: each fd comes back as itself, each end joined to its own."""
    target = target_runner.start(build_target("fdlayout", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"


def test_fd_above_the_restoring_soft_limit(build_target, target_runner, engine_cli, tmp_path):
    """An fd at 5000 restored by an engine whose soft RLIMIT_NOFILE is 1024:
    the task raises its soft limit (within the hard one) before making its
    table, instead of failing in dup2."""
    import os
    import resource
    target = target_runner.start(build_target("fdlayout"), "--high", "5000")
    img = tmp_path / "img"
    dump_to(target, img)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))   # inherited by engine
    try:
        engine_cli("restore", "-D", img)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)
    assert os.path.exists(f"/proc/{target.pid}/fd/5000")
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("high", [256, 0])
def test_fds_beside_the_engine_log(build_target, target_runner, engine_cli, tmp_path, high):
    """The engine logs through a copy of its stderr at fd 256 while it
    restores (so its tasks need not move it off fd 2): an image fd at 256
    still comes back as itself, the task keeps no fd the target did not
    have, and the log still reaches the engine's stderr after the tasks
    have made their tables."""
    import os
    target = target_runner.start(build_target("fdlayout"), "--high", str(high))
    fds = sorted(os.listdir(f"/proc/{target.pid}/fd"), key=int)
    img = tmp_path / "img"
    dump_to(target, img)
    out = engine_cli("restore", "-v", "-v", "-D", img)
    assert f"node mem:{target.pid} (in tracer" in out.stderr
    assert sorted(os.listdir(f"/proc/{target.pid}/fd"), key=int) == fds
    assert target.verdict() == "PASS"


@pytest.mark.parametrize("how, want", [
    ("size", "fifo-data.img: entry 0 (pipe {}): size 4294967295 is over "
             "/proc/sys/fs/pipe-max-size"),
    ("bytes", "fifo-data.img: entry 0 (pipe {}): bytes 16 do not fit in a pipe of 8 bytes"),
])
def test_hostile_fifo_data_is_refused(build_target, target_runner, engine_cli, tmp_path,
                                      how, want):
    """fifo-data.img goes through the same checks as pipes-data.img."""
    from engine.testing import engine_fails, task_gone
    target = target_runner.start(build_target("fifo"))
    img = tmp_path / "img"
    images = dump_to(target, img)
    entries = images.read("fifo-data")
    entries[0][0].size = 0xFFFFFFFF if how == "size" else 8
    images.write("fifo-data", entries)
    line = engine_fails("restore", "-D", img)
    assert want.format(entries[0][0].pipe_id) in line, line
    assert task_gone(target.pid)
