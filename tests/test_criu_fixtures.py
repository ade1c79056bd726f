"""CRIU's own images (written by `criu dump` 4.2) restore with engine.

The image sets live in ../shared/fixtures (see its README); each names
absolute paths under /tmp/engine-fixtures/MODE that are recreated here.
"""
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

CANDIDATES = [os.environ.get("ENGINE_FIXTURES"),
              Path(__file__).resolve().parents[2] / "shared" / "fixtures",
              "/work/shared/fixtures"]
FIXTURES = next((Path(c) / "criu-4.2" for c in CANDIDATES
                 if c and (Path(c) / "criu-4.2").is_dir()), Path("/nonexistent"))
PIDS = {"counter": 30001, "files": 30011, "pipe": 30031, "tcp": 30051, "threads": 30061,
        "tree": 30021, "unix": 30041}


@pytest.mark.serial         # fixed pids: no other test's task may sit there
@pytest.mark.parametrize("mode", sorted(PIDS))
def test_criu_image_set_restores(mode, engine_cli, tmp_path):
    if not FIXTURES.exists():
        pytest.skip(f"no fixtures at {FIXTURES}")
    root = Path("/tmp/engine-fixtures") / mode
    shutil.rmtree(root, ignore_errors=True)
    shutil.copytree(FIXTURES / mode / "root", root)
    for path in root.iterdir():
        path.chmod(0o755 if path.name == "fx" else 0o644)
    img = tmp_path / "img"
    shutil.copytree(FIXTURES / mode / "images", img)
    pid = PIDS[mode]
    assert not os.path.exists(f"/proc/{pid}"), f"fixture pid {pid} is taken"
    engine_cli("restore", "-D", img)
    time.sleep(0.2)
    os.kill(pid, signal.SIGTERM)
    result = root / "result"
    deadline = time.monotonic() + 10
    while not result.exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert result.exists(), "the restored fixture wrote no result"
    assert result.read_text().strip() == "PASS"
    # It exits after its verdict; we are its subreaper, so reap it.
    deadline = time.monotonic() + 10
    while os.waitpid(pid, os.WNOHANG) == (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
