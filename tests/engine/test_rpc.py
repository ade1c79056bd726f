"""CRIU's RPC served by `engine swrk FD`, and the `criu` command: a client
speaking rpc.proto over a SOCK_SEQPACKET socketpair, as runc does."""
import os
import socket
import subprocess
import sys
import time

import pytest

from engine.images import ImageDir
from engine.images.proto import rpc_pb2 as pb
from engine.testing import engine_command, reap_dumped_tree, task_gone

DUMP_NOTIFIES = ["pre-dump", "network-lock", "post-dump"]
RESTORE_NOTIFIES = ["pre-restore", "setup-namespaces", "post-setup-namespaces",
                    "post-restore", "network-unlock", "pre-resume", "post-resume"]


class Swrk:
    """`python -m engine swrk FD` and the client's end of its socket."""

    def __init__(self):
        self.sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        cmd, env = engine_command("swrk", theirs.fileno())
        self.proc = subprocess.Popen(cmd, env=env, pass_fds=[theirs.fileno()],
                                     stderr=subprocess.PIPE, text=True)
        theirs.close()
        self.notifies: list[tuple[str, int | None]] = []

    def call(self, req, answer=True):
        """Send `req`; answer every NOTIFY with `answer`; the final criu_resp."""
        self.sock.send(req.SerializeToString())
        while True:
            data = self.sock.recv(1 << 20)
            assert data, f"swrk closed the socket:\n{self.finish()[1]}"
            resp = pb.criu_resp.FromString(data)
            if resp.type != pb.NOTIFY:
                return resp
            self.notifies.append((resp.notify.script,
                                  resp.notify.pid if resp.notify.HasField("pid") else None))
            self.sock.send(pb.criu_req(type=pb.NOTIFY, notify_success=answer(resp)
                                       if callable(answer) else answer).SerializeToString())

    def finish(self):
        self.sock.close()
        _, err = self.proc.communicate(timeout=60)
        return self.proc.returncode, err


def _call(req, **kw):
    swrk = Swrk()
    try:
        resp = swrk.call(req, **kw)
    finally:
        code, err = swrk.finish()
    return resp, swrk.notifies, code, err


def _opts(images: int, **fields):
    return pb.criu_opts(images_dir_fd=images, log_level=4, log_file="rpc.log", **fields)


def _dir_fd(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_version_says_which_criu():
    resp, _, code, _ = _call(pb.criu_req(type=pb.VERSION))
    assert resp.success and resp.type == pb.VERSION
    assert (resp.version.major_number, resp.version.minor_number) == (4, 2)
    assert code == 0


def test_engine_version_names_the_criu_it_offers():
    cmd, env = engine_command("--version")
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True).stdout
    assert out.startswith("engine ") and "CRIU 4.2" in out


def test_feature_check_answers_honestly():
    req = pb.criu_req(type=pb.FEATURE_CHECK, features=pb.criu_features(
        mem_track=True, lazy_pages=True))
    resp, _, _, _ = _call(req)
    assert resp.success
    assert resp.features.HasField("mem_track") and not resp.features.mem_track
    assert not resp.features.lazy_pages and not resp.features.HasField("pidfd_store")


def test_hook_engine_dump_written(build_target, target_runner, tmp_path):
    """DUMP with notify_scripts through the caller's images fd: the notifies
    in CRIU's order, post-dump once the set is complete; then RESTORE."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img, work = tmp_path / "img", tmp_path / "work"
    img.mkdir()
    work.mkdir()
    fd, work_fd = _dir_fd(img), _dir_fd(work)
    try:
        written = []
        resp, notifies, code, err = _call(
            pb.criu_req(type=pb.DUMP, opts=_opts(fd, pid=target.pid, notify_scripts=True,
                                                 work_dir_fd=work_fd)),
            answer=lambda r: written.append(sorted(os.listdir(img))) or True)
    finally:
        os.close(fd)
        os.close(work_fd)
    assert resp.success, f"{resp.cr_errmsg}\n{err}"
    assert [n for n, _ in notifies] == DUMP_NOTIFIES
    assert "inventory.img" in written[-1] and "inventory.img" not in written[1]
    target.reap()
    target.assert_gone()
    reap_dumped_tree(img)
    assert ImageDir(str(img)).read_one("inventory").img_version == 2
    assert "dump" in (work / "rpc.log").read_text()      # the log goes to the work dir
    assert not (img / "rpc.log").exists()
    _restore(target, img)


def _restore(target, img):
    fd = _dir_fd(img)
    try:
        resp, notifies, code, err = _call(
            pb.criu_req(type=pb.RESTORE, opts=_opts(fd, notify_scripts=True, rst_sibling=True)))
    finally:
        os.close(fd)
    assert resp.success, f"{resp.cr_errmsg}\n{err}"
    assert resp.restore.pid == target.pid
    assert [n for n, _ in notifies] == RESTORE_NOTIFIES
    assert dict(notifies)["post-restore"] == target.pid
    assert target.verdict() == "PASS"


def test_hook_engine_restore_ready(build_target, target_runner, tmp_path):
    """A client answering post-restore with failure: the restore is undone
    (CRIU fails it too), the error says which notify."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    cmd, env = engine_command("dump", "-t", target.pid, "-D", img)
    subprocess.run(cmd, env=env, check=True)
    target.reap()
    reap_dumped_tree(img)
    fd = _dir_fd(img)
    try:
        resp, notifies, code, _ = _call(
            pb.criu_req(type=pb.RESTORE, opts=_opts(fd, notify_scripts=True)),
            answer=lambda r: r.notify.script != "post-restore")
    finally:
        os.close(fd)
    assert not resp.success and resp.type == pb.RESTORE and code == 1
    assert "notify post-restore: the client reported its action failed" in resp.cr_errmsg
    assert [n for n, _ in notifies] == RESTORE_NOTIFIES[:4]
    assert task_gone(target.pid)           # undone, as before any release


def test_an_option_not_honoured_is_refused(tmp_path):
    fd = _dir_fd(tmp_path)
    try:
        resp, _, code, _ = _call(pb.criu_req(type=pb.DUMP, opts=_opts(
            fd, pid=os.getpid(), track_mem=True)))
    finally:
        os.close(fd)
    assert not resp.success and resp.type == pb.DUMP
    assert "option track_mem is not supported" in resp.cr_errmsg
    assert code == 1
    assert "track_mem" in (tmp_path / "rpc.log").read_text()


def test_an_images_fd_the_caller_lacks_is_refused():
    resp, _, _, _ = _call(pb.criu_req(type=pb.DUMP, opts=_opts(999, pid=os.getpid())))
    assert not resp.success and "images_dir_fd 999" in resp.cr_errmsg


def test_a_request_not_offered_says_so():
    resp, _, _, _ = _call(pb.criu_req(type=pb.PRE_DUMP, opts=_opts(0)))
    assert not resp.success and "PRE_DUMP" in resp.cr_errmsg


def test_service_answers_each_connection(tmp_path):
    address = tmp_path / "criu.sock"
    cmd, env = engine_command("service", "--address", address)
    service = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    try:
        for _ in range(100):
            if address.exists():
                break
            time.sleep(0.02)
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
                sock.connect(str(address))
                sock.send(pb.criu_req(type=pb.VERSION).SerializeToString())
                resp = pb.criu_resp.FromString(sock.recv(1 << 16))
                assert resp.success and resp.version.major_number == 4
                assert sock.recv(1 << 16) == b""       # one request per connection
    finally:
        service.terminate()
        _, err = service.communicate(timeout=10)
    assert service.returncode == 0, err
    assert not address.exists()


PYCRIU_CLIENT = """
import os, sys, pycriu
shim, images, pid = sys.argv[1], sys.argv[2], int(sys.argv[3])
c = pycriu.criu()
c.use_binary(shim)
c.opts.images_dir_fd = os.open(images, os.O_DIRECTORY)
if pid:
    c.opts.pid = pid
    c.dump()
else:
    print(c.restore().pid)
"""


def test_pycriu_dumps_and_restores_through_the_criu_command(build_target, target_runner,
                                                            tmp_path):
    """CRIU's own Python client (Debian's pycriu, the system python's): it
    runs `criu swrk FD` with fds 0-2 closed, as libcriu does."""
    system_python = "/usr/bin/python3"
    probe = subprocess.run([system_python, "-c", "import pycriu"], capture_output=True)
    if probe.returncode:
        pytest.skip("Debian's python3-criu (pycriu) is not installed")
    shim = tmp_path / "criu"
    _, env = engine_command()
    shim.write_text(f"#!/bin/sh\nPYTHONPATH={env['PYTHONPATH']} "
                    f"exec {sys.executable} -m engine.criu_cli \"$@\"\n")
    shim.chmod(0o755)
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    img.mkdir()
    client = [system_python, "-c", PYCRIU_CLIENT, str(shim), str(img)]
    subprocess.run([*client, str(target.pid)], check=True, timeout=60)
    target.reap()
    reap_dumped_tree(img)
    out = subprocess.run([*client, "0"], check=True, timeout=60, capture_output=True, text=True)
    assert int(out.stdout) == target.pid
    assert target.verdict() == "PASS"


# --- the criu command ---

def _criu(*args, check=True):
    _, env = engine_command()
    proc = subprocess.run([sys.executable, "-m", "engine.criu_cli", *map(str, args)],
                          env=env, capture_output=True, text=True, timeout=120)
    if check:
        assert proc.returncode == 0, proc.stderr
    return proc


def test_criu_version():
    assert _criu("--version").stdout == "Version: 4.2\n"


def test_criu_check_runs_the_engines_checks():
    out = _criu("check").stdout
    assert "clone3" in out and out.endswith("Looks good.\n")


def test_criu_is_installed_by_the_package():
    import tomllib
    from engine.testing import REPO_ROOT
    with open(REPO_ROOT / "pyproject.toml", "rb") as f:
        scripts = tomllib.load(f)["project"]["scripts"]
    assert scripts["criu"] == "engine.criu_cli:run"


def test_criu_dump_and_restore(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    img.mkdir()
    _criu("dump", "-t", target.pid, "-D", img, "--shell-job", "--tcp-established",
          "-o", "dump.log", "-v4")
    target.reap()
    reap_dumped_tree(img)
    assert "dump" in (img / "dump.log").read_text()
    _criu("restore", "-D", img, "-d", "--pidfile", tmp_path / "pid", "-o", "restore.log")
    assert int((tmp_path / "pid").read_text()) == target.pid
    assert target.verdict() == "PASS"


def test_criu_restore_waits_for_the_root_without_d(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    img.mkdir()
    _criu("dump", "-t", target.pid, "-D", img)
    target.reap()
    reap_dumped_tree(img)
    _, env = engine_command()
    criu = subprocess.Popen([sys.executable, "-m", "engine.criu_cli", "restore", "-D", str(img)],
                            env=env, stderr=subprocess.PIPE, text=True)
    for _ in range(500):
        if not task_gone(target.pid):
            break
        time.sleep(0.01)
    time.sleep(0.2)
    assert criu.poll() is None, criu.stderr.read()       # still the root's parent
    assert target.verdict() == "PASS"
    _, err = criu.communicate(timeout=10)
    assert criu.returncode == 0, err


def test_criu_refuses_a_flag_it_does_not_know(tmp_path):
    proc = _criu("dump", "-t", os.getpid(), "-D", tmp_path, "--manage-cgroups", check=False)
    assert proc.returncode == 1
    assert "not supported by the engine's criu: --manage-cgroups" in proc.stderr


def _service_state(pid: int) -> tuple[set[str], str, int]:
    """The service's open fds, its children and its resident memory (kB)."""
    fds = set(os.listdir(f"/proc/{pid}/fd"))
    children = " ".join((open(f"/proc/{pid}/task/{t}/children").read()
                         for t in os.listdir(f"/proc/{pid}/task"))).strip()
    rss = next(int(line.split()[1]) for line in open(f"/proc/{pid}/status")
               if line.startswith("VmRSS:"))
    return fds, children, rss


def _service_call(address, req):
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
        sock.connect(str(address))
        sock.send(req.SerializeToString())
        return pb.criu_resp.FromString(sock.recv(1 << 20))


def test_warm_service_stays_clean(build_target, target_runner, tmp_path):
    """100 requests (restores that fail, then a real one) leave the warm
    service with the fds, children and memory it had, and a failed request
    does not spoil the next."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    cmd, env = engine_command("dump", "-t", target.pid, "-D", img)
    subprocess.run(cmd, env=env, check=True)
    target.reap()
    reap_dumped_tree(img)
    address = tmp_path / "criu.sock"
    cmd, env = engine_command("service", "--address", address)
    service = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, text=True)
    empty, fd = tmp_path / "empty", None
    empty.mkdir()
    try:
        for _ in range(500):
            if address.exists():
                break
            time.sleep(0.02)
        before = _service_state(service.pid)
        fd = _dir_fd(empty)
        for _ in range(99):
            resp = _service_call(address, pb.criu_req(type=pb.RESTORE, opts=_opts(fd)))
            assert not resp.success and resp.type == pb.RESTORE
        os.close(fd)
        fd = _dir_fd(img)
        resp = _service_call(address, pb.criu_req(type=pb.RESTORE, opts=_opts(fd)))
        assert resp.success, resp.cr_errmsg
        assert resp.restore.pid == target.pid
        assert target.verdict() == "PASS"
        for _ in range(100):            # the last worker may still be exiting
            after = _service_state(service.pid)
            if after[1] == before[1]:
                break
            time.sleep(0.02)
        assert after[:2] == before[:2]
        assert after[2] < before[2] + 1024, f"RSS {before[2]} kB -> {after[2]} kB"
    finally:
        if fd is not None:
            os.close(fd)
        service.terminate()
        _, err = service.communicate(timeout=10)
    assert service.returncode == 0, err
