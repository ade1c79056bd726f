#!/usr/bin/env bash
# Installs engine, then dumps a counting process and restores it: the same
# PID counts on from where it was.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp /tmp/engine-setup.XXXXXX.log)
scripts/setup.sh >"$log" 2>&1 || { cat "$log"; exit 1; }
work=$(mktemp -d /tmp/engine-demo.XXXXXX)
gcc -O2 -o "$work/count" scripts/demo_count.c
"$work/count" "$work/count.log" </dev/null >/dev/null 2>&1 &
pid=$!
sleep 1
echo "counter $pid is at: $(tail -n1 "$work/count.log")"
# The shell's own stderr is muted while the dump kills its job (it would
# print "Killed"); the engine's goes to the terminal through fd 3.
exec 3>&2 2>/dev/null
.venv/bin/engine dump -t "$pid" -D "$work/img" 2>&3
wait "$pid" || true
exec 2>&3 3>&-
if kill -0 "$pid" 2>/dev/null; then echo "process $pid still runs" >&2; exit 1; fi
echo "dumped to $work/img; process $pid is gone"
.venv/bin/engine restore -D "$work/img"
sleep 1
echo "restored $pid is at: $(tail -n1 "$work/count.log") ($(cat /proc/$pid/comm))"
kill "$pid"
