"""files and fs: fd table, offsets, O_APPEND, cloexec, /dev/null, cwd."""


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
