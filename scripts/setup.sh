#!/usr/bin/env bash
# Installs everything `engine` needs on a fresh Debian machine, as root:
# Debian's criu package (only for `crit`, which checks our images), gcc for
# the test targets, and a venv in .venv with engine installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v crit >/dev/null || ! command -v gcc >/dev/null || ! command -v nft >/dev/null \
        || ! command -v tmux >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # tmux: the terminal acceptance test (tests/programs/test_tmux.py)
    apt-get install -y -qq criu gcc libc6-dev nftables iproute2 tmux >/dev/null
fi
# postgresql: the SysV IPC acceptance test (tests/programs/test_postgresql.py)
if ! compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null; then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq postgresql >/dev/null
fi
if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
# editable_mode=compat: a plain path in a .pth, not setuptools' import
# finder, which imports pathlib, fnmatch and importlib.util into every
# `engine` run (~3 ms). Should setuptools drop compat mode, the default.
.venv/bin/python -m pip install -q -e '.[test]' --config-settings editable_mode=compat 2>/dev/null \
    || .venv/bin/python -m pip install -q -e '.[test]'
# Byte-compile now: with PYTHONDONTWRITEBYTECODE set (as on these machines)
# every `engine` run would otherwise recompile its modules (~40 ms).
.venv/bin/python -m compileall -q engine plugins >/dev/null
