"""seccomp: strict mode, filters and no_new_privs come back (issues 15, 20)."""
import pytest


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_filter_with_no_new_privs_comes_back(build_target, target_runner, dump_restore,
                                            tmp_path, variant):
    target = target_runner.start(build_target("seccomp", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"
