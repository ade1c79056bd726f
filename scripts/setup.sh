#!/usr/bin/env bash
# Installs everything `engine` needs on a fresh Debian machine, as root:
# Debian's packages below, and a venv in .venv with engine installed editable.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian's packages, each only when missing: criu (only for `crit`, which
# checks our images), gcc for the test targets, nftables and iproute2 (the
# network lock, netns), and the real programs tests/programs/ checkpoint.
# Each test starts its own program in the foreground from a temporary config,
# so the packages' services must not start: a policy-rc.d answering 101
# ("action forbidden") keeps invoke-rc.d from starting them, removed after
# (one already there, as in a container image, is left alone).
need=()
command -v crit >/dev/null || need+=(criu)
command -v gcc >/dev/null || need+=(gcc libc6-dev)
command -v nft >/dev/null || need+=(nftables)
command -v ip >/dev/null || need+=(iproute2)
command -v tmux >/dev/null || need+=(tmux)                          # test_tmux
{ command -v redis-server && command -v redis-cli; } >/dev/null || need+=(redis-server redis-tools)
command -v nginx >/dev/null || need+=(nginx-light)                  # test_nginx
command -v ping >/dev/null || need+=(iputils-ping)                  # test_ping
command -v tcpdump >/dev/null || need+=(tcpdump)                    # test_tcpdump
compgen -G "/usr/lib/postgresql/*/bin/postgres" >/dev/null || need+=(postgresql)   # test_postgresql
if [ ${#need[@]} -gt 0 ]; then
    export DEBIAN_FRONTEND=noninteractive
    policy=/usr/sbin/policy-rc.d
    ours=
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod 755 "$policy"
        ours=1
        trap 'rm -f "$policy"' EXIT
    fi
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
    if [ -n "$ours" ]; then
        rm -f "$policy"
        trap - EXIT
    fi
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
