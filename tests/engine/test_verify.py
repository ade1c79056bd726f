"""engine restore --verify: the restored tree checked against the dump's
fingerprint before it runs (issue 15)."""
import json

import pytest

from engine.images import ImageDir
from engine.testing import dump_to, engine_cli, task_gone
from engine.verify import FINGERPRINT


@pytest.mark.parametrize("name", ["counter", "sharedfd", "readpipe"])
def test_a_faithful_restore_verifies(build_target, target_runner, tmp_path, name):
    """What the dump saw is what the restore made: no difference, and the
    target finds its own state too."""
    target = target_runner.start(build_target(name, "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    fingerprint = json.loads((img / FINGERPRINT).read_text())
    mine = fingerprint["tasks"][str(target.pid)]
    assert any(isinstance(m[3], int) and m[3] for m in mine["maps"].values())   # summed
    engine_cli("restore", "-D", img, "--verify")
    assert target.verdict() == "PASS"


def _spoil_a_page(img):
    """Flip one byte of the first page the dump saved: an image every check
    of the restore accepts, whose memory is not the dumped one."""
    pages = sorted(img.glob("pages-*.img"))[0]
    data = bytearray(pages.read_bytes())
    data[100] ^= 0x5A
    pages.write_bytes(bytes(data))


def test_a_changed_page_is_refused_by_verify(build_target, target_runner, tmp_path):
    """The restore runs through (the byte is just memory), so only the audit
    can see it: one line per difference, naming the task, the mapping and
    both checksums; nothing is left running."""
    target = target_runner.start(build_target("counter", "static-nopie"))
    img = tmp_path / "img"
    dump_to(target, img)
    _spoil_a_page(img)
    proc = engine_cli("restore", "-D", img, "--verify", check=False)
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert lines[-1].startswith("engine: error: --verify: 1 difference(s) from the dump, "
                                f"the first: task {target.pid}: maps: "), proc.stderr
    assert "dumped" in lines[-1] and "restored" in lines[-1]
    assert any(f"verify: task {target.pid}: maps" in line for line in lines[:-1])
    assert task_gone(target.pid)
    # Without the audit the same image restores "successfully".
    engine_cli("restore", "-D", img)
    assert not task_gone(target.pid)
    target.kill()


def test_a_missing_fingerprint_is_refused(dumped_counter):
    target, img = dumped_counter
    (img / FINGERPRINT).unlink()
    proc = engine_cli("restore", "-D", img, "--verify", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip() == (f"engine: error: {FINGERPRINT}: missing: the dump wrote "
                                   "no fingerprint, --verify cannot check the restore")
    assert task_gone(target.pid)


def test_crit_still_reads_the_image_set(dumped_counter):
    """The fingerprint is no CRIU image: the set stays one crit and CRIU read."""
    _, img = dumped_counter
    assert ImageDir(str(img)).read_one("inventory").img_version == 2
    import subprocess
    subprocess.run(["crit", "show", str(img / "pstree.img")], check=True,
                   capture_output=True)


@pytest.mark.parametrize("text, want", [
    ("{", "unreadable"),
    ('{"version": 99, "tasks": {}}', "version: not a fingerprint this engine reads"),
    ('{"version": 1, "tasks": {"x": {}}}', "tasks: not a list of pids"),
    ('{"version": 1, "tasks": {"1": {}}, "volatile": {"1": [[-1, 8]]}}',
     "volatile: not (address, length) pairs by pid"),
])
def test_a_spoilt_fingerprint_is_refused(dumped_counter, text, want):
    """The fingerprint is input too: spoilt, it is refused in one line naming
    it and the field, before any task starts."""
    target, img = dumped_counter
    (img / FINGERPRINT).write_text(text)
    proc = engine_cli("restore", "-D", img, "--verify", check=False)
    assert proc.returncode != 0
    assert proc.stderr.strip().startswith(f"engine: error: {FINGERPRINT}: {want}"), proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert task_gone(target.pid)
