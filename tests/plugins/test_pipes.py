"""pipes: ends gone, buffer sizes, and images that must be refused."""
import pytest


@pytest.mark.parametrize("variant", ["dynamic-pie", "static-nopie"])
def test_pipe_ends_gone_and_buffer_sizes(build_target, target_runner, dump_restore, tmp_path,
                                         variant):
    """Writer gone: bytes then EOF; reader gone: EPIPE; F_SETPIPE_SZ kept."""
    target = target_runner.start(build_target("pipeends", variant))
    assert dump_restore(target, tmp_path / "img") == "PASS"
