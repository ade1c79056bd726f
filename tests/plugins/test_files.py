"""files and fs: fd table, offsets, O_APPEND, cloexec, /dev/null, cwd."""
import pytest



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
    engine_cli("dump", "-t", target.pid, "-D", img)
    target.reap()
    data = [p for p in target.workdir.iterdir() if p.name.startswith("data")]
    assert data, list(target.workdir.iterdir())
    with open(data[0], "ab") as f:
        f.write(b"grown")
    proc = engine_cli("restore", "-D", img, check=False)
    assert proc.returncode != 0
    assert "files.img" in proc.stderr and "size changed" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_failed_dump_leaves_the_target_running(engine_cli, tmp_path):
    """An fd no plugin can dump (here a netlink socket) fails the dump with
    one line; the tree runs on untouched."""
    import os
    import signal
    import subprocess
    import sys
    import time
    code = ("import os, socket, time\na = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW)\n"
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
