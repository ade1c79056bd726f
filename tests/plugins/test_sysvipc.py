"""System V IPC (plugins/ipcns, plugins/mem): a namespace's segments, sets
and queues back with their ids and contents before the tasks attach, the
segments at their addresses (tests/targets/sysvipc.c checks from inside);
hostile ipcns-* images refused before anything starts."""
import json
import struct
import subprocess

import pytest

from engine.testing import dump_to, engine_fails, task_gone


@pytest.mark.parametrize("variant, args", [("dynamic-pie", []), ("static-nopie", []),
                                           ("dynamic-pie", ["--rmid"])])
def test_objects_of_a_private_ipc_namespace_come_back(build_target, target_runner,
                                                      dump_restore, tmp_path, variant, args):
    target = target_runner.start(build_target("sysvipc", variant), *args)
    assert dump_restore(target, tmp_path / "img") == "PASS", target.log()


def test_images_hold_the_objects(build_target, target_runner, tmp_path):
    target = target_runner.start(build_target("sysvipc"))
    images = dump_to(target, tmp_path / "img")
    ns_id = images.read_one("ids", id=target.pid).ipc_ns_id
    (shm, data), = images.read("ipcns-shm", id=ns_id)
    assert (shm.desc.key, shm.desc.mode, shm.size, len(data)) == (0x5eed, 0o640, 3 * 4096,
                                                                 3 * 4096)
    assert shm.desc.id == target.addr("shmid")
    # After each entry, the bytes CRIU writes there (criu/ipc_ns.c)
    (sem, values), = images.read("ipcns-sem", id=ns_id)
    assert (sem.nsems, values) == (3, struct.pack("<3H", 7, 0, 3) + b"\0\0")
    (msg, raw), = images.read("ipcns-msg", id=ns_id)
    assert msg.qnum == 3 and raw.count(b"first of three\0") == 1
    shown = json.loads(subprocess.run(["crit", "decode", "-i", str(images.path("ipcns-msg",
                                                                               id=ns_id))],
                                      capture_output=True, text=True, check=True).stdout)
    assert [m["mtype"] for m in shown["entries"][0]["extra"][::2]] == [5, 2, 9]
    mm = images.read_one("mm", id=target.pid)
    sysv = [v for v in mm.vmas if v.status & (1 << 10)]
    assert [(v.start, v.shmid) for v in sysv] == [(0x5eed0000000, shm.desc.id)]


@pytest.fixture
def host_objects():
    """The --host target's objects, removed whatever the test's outcome
    (a dumped or failed tree leaves them in the engine's namespace)."""
    yield
    for kind in ("-M", "-S", "-Q"):
        subprocess.run(["ipcrm", kind, "0x5eed"], capture_output=True)


def test_segments_of_the_host_namespace_come_back(build_target, target_runner, engine_cli,
                                                  host_objects, tmp_path):
    """Only the segment the tree attached is its state: the set and queue
    it made there are not dumped. The segment outlives the dump; removed,
    it comes back with its id."""
    target = target_runner.start(build_target("sysvipc"), "--host")
    images = dump_to(target, tmp_path / "img")
    ns_id = images.read_one("ids", id=target.pid).ipc_ns_id
    (entry, data), = images.read("ipcns-shm", id=ns_id)
    assert (entry.desc.key, entry.desc.id) == (0x5eed, target.addr("shmid"))
    assert not images.exists("ipcns-sem", id=ns_id) and not images.exists("ipcns-var", id=ns_id)
    subprocess.run(["ipcrm", "-m", str(entry.desc.id)], check=True)
    engine_cli("restore", "-D", str(tmp_path / "img"), "--verify")
    assert target.verdict() == "PASS"


def test_a_taken_host_segment_id_is_refused(build_target, target_runner, engine_cli,
                                            host_objects, tmp_path):
    """The segment is still there after the dump: its id is taken."""
    target = target_runner.start(build_target("sysvipc"), "--host")
    images = dump_to(target, tmp_path / "img")
    ns_id = images.read_one("ids", id=target.pid).ipc_ns_id
    (entry, _), = images.read("ipcns-shm", id=ns_id)
    line = engine_fails("restore", "-D", str(tmp_path / "img"))
    assert line.endswith(f"ipcns-shm-{ns_id}.img: shm id {entry.desc.id} (key 0x5eed) "
                         "is taken in this IPC namespace"), line
    assert task_gone(target.pid)


def _edit(images, ns_id, kind, how):
    from plugins.ipcns.payloads import msg_payload
    entries = images.read(f"ipcns-{kind}", id=ns_id)
    first = entries[0][0]
    if how == "size huge":
        first.size = 1 << 62
    elif how == "id negative":
        first.desc.id = 0xFFFFFFFF
    elif how == "message over msgmax":
        raw = msg_payload([(5, b"x" * 9000), (2, b"b"), (9, b"c")])
        first.messages_bytes, first.qbytes = len(raw), 1 << 20
        entries[0] = (first, raw)
    elif how == "values not nsems":
        first.nsems = 5
    images.write(f"ipcns-{kind}", entries, id=ns_id)


@pytest.mark.parametrize("kind, how, words", [
    ("shm", "size huge", "size=4611686018427387904: payload truncated"),
    ("shm", "id negative", "desc.id 4294967295 is not an id"),
    ("msg", "message over msgmax", "message 0: msize 9000, over msg_ctlmax 8192"),
    ("sem", "values not nsems", "values_bytes 8, want 16 for nsems 5"),
])
def test_hostile_ipc_images_are_refused(build_target, target_runner, engine_cli, tmp_path,
                                        kind, how, words):
    target = target_runner.start(build_target("sysvipc"))
    images = dump_to(target, tmp_path / "img")
    ns_id = images.read_one("ids", id=target.pid).ipc_ns_id
    _edit(images, ns_id, kind, how)
    line = engine_fails("restore", "-D", str(tmp_path / "img"))
    assert f"ipcns-{kind}-{ns_id}.img" in line and words in line, line
    assert task_gone(target.pid)
