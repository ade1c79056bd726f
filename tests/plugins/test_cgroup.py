"""cgroup: the tree's cgroups and their properties (issue 18, item 4)."""
import os
import signal
import time

import pytest

from engine.testing import dump_restore, dump_to, engine_cli, engine_fails, task_gone

ROOT = "/sys/fs/cgroup"
PIDS_MAX = "77"
MEMORY_LIMIT = str(123 << 20)


def _hierarchies():
    """(pids dir, memory dir, v2 dir) roots as this machine mounts them."""
    if os.path.exists(f"{ROOT}/cgroup.controllers"):
        return ROOT, ROOT, None                               # v2 only
    return f"{ROOT}/pids", f"{ROOT}/memory", f"{ROOT}/unified"


class Cgroups:
    """Directories the test makes, removed at teardown (deepest first)."""

    def __init__(self):
        self.made = []
        self.name = f"engine-test-cg-{os.getpid()}"

    def make(self, root, *parts, props=()):
        path = root
        for part in parts:
            path = os.path.join(path, part)
            if not os.path.isdir(path):
                os.mkdir(path)
                self.made.append(path)
        for name, value in props:
            with open(os.path.join(path, name), "w") as f:
                f.write(value)
        return path

    def remove(self, path):
        for _ in range(200):
            try:
                os.rmdir(path)
                return
            except FileNotFoundError:
                return
            except OSError:
                # Its tasks are still dying, or forked away from the
                # target's group (forkstorm's runner): killed here.
                with open(os.path.join(path, "cgroup.procs")) as f:
                    for pid in f.read().split():
                        try:
                            os.kill(int(pid), signal.SIGKILL)
                        except ProcessLookupError:
                            pass
                time.sleep(0.01)
        raise AssertionError(f"cgroup {path} still busy")

    def cleanup(self):
        for path in sorted(self.made, key=len, reverse=True):
            self.remove(path)


@pytest.fixture
def cgroups():
    cg = Cgroups()
    yield cg
    cg.cleanup()


def _start(cg, build_target, target_runner, variant="static-nopie", *extra):
    pids_root, memory_root, v2_root = _hierarchies()
    v1 = pids_root != memory_root
    pids = cg.make(pids_root, cg.name, props=[("pids.max", PIDS_MAX)])
    memory = cg.make(memory_root, cg.name,
                     props=[("memory.limit_in_bytes" if v1 else "memory.max", MEMORY_LIMIT)])
    joins = [pids] + ([memory] if v1 else [])
    if v2_root:
        joins.append(cg.make(v2_root, cg.name, "leaf"))
    args = []
    for i, path in enumerate(joins, 1):
        args += [f"--join{i}", os.path.join(path, "cgroup.procs")]
    target = target_runner.start(build_target("cgroup", variant), *args, *extra)
    return target, pids, memory, v2_root


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_cgroups_and_properties_come_back(cgroups, build_target, target_runner, tmp_path,
                                          variant):
    """Dumped, the cgroups removed: the restore (soft, the default) makes
    them again with pids.max 77 and the memory limit, and the task and its
    child join them."""
    pids_root = _hierarchies()[0]
    target, pids, memory, _ = _start(cgroups, build_target, target_runner, variant,
                                     "--prop", f"{pids_root}/{cgroups.name}/pids.max",
                                     "--want", PIDS_MAX)
    img = tmp_path / "img"
    dump_to(target, img)
    cgroups.cleanup()
    engine_cli("restore", "-D", str(img), "--verify")
    assert target.verdict() == "PASS"
    limit = "memory.limit_in_bytes" if pids != memory else "memory.max"
    with open(os.path.join(memory, limit)) as f:
        assert f.read().strip() == MEMORY_LIMIT


def test_cgroup_root_moves_the_tree(cgroups, build_target, target_runner, tmp_path):
    """--cgroup-root pids:/NAME-moved puts the root task's pids cgroup there."""
    pids_root = _hierarchies()[0]
    moved = f"{cgroups.name}-moved"
    target, *_ = _start(cgroups, build_target, target_runner, "static-nopie",
                        "--prop", f"{pids_root}/{moved}/pids.max", "--want", PIDS_MAX,
                        "--expect-line", f":pids:/{moved}\n")
    cgroups.made.append(f"{pids_root}/{moved}")
    assert dump_restore(target, tmp_path / "img",
                        restore_args=["--cgroup-root", f"pids:/{moved}"]) == "PASS"


@pytest.mark.parametrize("spoil, says", [
    (lambda e: setattr(e.sets[0].ctls[0], "path", "/../../etc"),
     "path '/../../etc' of {name!r} holds '.' or '..'"),
    (lambda e: e.controllers[0].dirs[0].properties.add(name="../../release_agent", value="x"),
     "property '../../release_agent' is not a property file name"),
    (lambda e: e.controllers[0].dirs[0].properties.add(name="cgroup.procs", value="1"),
     "property 'cgroup.procs' is not a property the engine writes"),
])
def test_hostile_cgroup_image_is_refused(cgroups, build_target, target_runner, tmp_path,
                                         spoil, says):
    target, *_ = _start(cgroups, build_target, target_runner)
    img = tmp_path / "img"
    images = dump_to(target, img)
    entry = images.read_one("cgroup")
    name = entry.sets[0].ctls[0].name
    dir_path = "/" + entry.controllers[0].dirs[0].dir_name
    spoil(entry)
    images.write("cgroup", [entry])
    expected = says.format(name=name)
    if expected.startswith("property"):
        expected = f"{dir_path}: {expected}"
    else:
        expected = f"set 2: {expected}"
    assert engine_fails("restore", "-D", img) == f"engine: error: cgroup.img: {expected}"
    assert task_gone(target.pid)


# --- the cgroup freezer (engine dump --freeze-cgroup) -------------------------

def _freezer_dirs():
    """Where a freezer cgroup can be made here: v2 (cgroup.freeze) and, in a
    hybrid layout, the v1 freezer (freezer.state)."""
    pids_root, _, v2_root = _hierarchies()
    out = [("v2", v2_root or ROOT)]
    if os.path.isdir(f"{ROOT}/freezer"):
        out.append(("v1", f"{ROOT}/freezer"))
    return out


@pytest.mark.parametrize("kind", ["v2", "v1"])
def test_fast_forking_tree_dumped_through_the_freezer(cgroups, build_target, target_runner,
                                                      tmp_path, kind):
    """The tree forks and reaps without pause: frozen by its cgroup first,
    it is dumped whole and goes on after restore."""
    roots = dict(_freezer_dirs())
    if kind not in roots:
        pytest.skip(f"no {kind} freezer here")
    frozen_at = cgroups.make(roots[kind], cgroups.name + "-fz")
    target = _start_in(target_runner, build_target, frozen_at)
    assert dump_restore(target, tmp_path / "img",
                        dump_args=["--freeze-cgroup", frozen_at]) == "PASS"


def test_freeze_cgroup_leave_stopped_leaves_it_frozen(cgroups, build_target, target_runner,
                                                      tmp_path):
    kind, root = _freezer_dirs()[0]
    frozen_at = cgroups.make(root, cgroups.name + "-fz")
    target = _start_in(target_runner, build_target, frozen_at)
    engine_cli("dump", "-t", str(target.pid), "-D", str(tmp_path / "img"),
               "--freeze-cgroup", frozen_at, "--leave-stopped")
    with open(os.path.join(frozen_at, "cgroup.events")) as f:
        assert "frozen 1" in f.read().split("\n")
    with open(os.path.join(frozen_at, "cgroup.freeze"), "w") as f:
        f.write("0")
    assert target.verdict() == "PASS"


def _start_in(target_runner, build_target, cgroup):
    """forkstorm, started inside `cgroup` (its children are born there)."""
    return target_runner.start(build_target("forkstorm", "static-nopie"),
                               "--join", os.path.join(cgroup, "cgroup.procs"))
